"""`tito module test` runs a module's package tests against the STUDENT's build, not the reference.

The repository's pytest config puts its root on sys.path; if that came before the build, every
student would be graded on the reference tinytorch/ and any mistake would pass. A realistic mistake
(a module called twice in one forward costed once) is put into module 14's reference build, in a
temporary folder; its tests must fail on it, and pass on the unchanged build."""

from pathlib import Path

from tito import export, grading
from tito.manifest import Repo

ROOT = Path(__file__).resolve().parents[2]
REPO = Repo.load(ROOT)
MODULE = REPO.module("14")
CORRECT = "for in_shapes, out_shape, call_bytes in own_calls:"
MISTAKE = "for in_shapes, out_shape, call_bytes in own_calls[:1]:"


def run_tests_on(code: str, build: Path) -> grading.PackageRun:
    grading.isolated_build(REPO, MODULE, code, build)
    return grading.run_package_tests(REPO, MODULE, build)


def test_the_package_tests_grade_the_students_build(tmp_path):
    reference = export.reference_build(REPO, MODULE)
    assert reference.count(CORRECT) == 1, "the mutated line moved: update this test"
    wrong = run_tests_on(reference.replace(CORRECT, MISTAKE), tmp_path / "wrong")
    assert not wrong.ok and any("twice" in name for name in wrong.failed), \
        f"a build that costs a repeated call once passed the tests, so they did not import it:\n{wrong.output[-1500:]}"
    right = run_tests_on(reference, tmp_path / "right")
    assert right.ok, right.output[-3000:]
