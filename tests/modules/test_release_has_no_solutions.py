"""What is released to students holds no solution code, for every module of the tier.

The release is made by nbgrader's own preprocessors (tito.notebooks.student_version, the same
ones `nbgrader generate_assignment` runs). Oracle: every solution body of the instructor's
source, line by line; none of its distinctive lines may appear in the student's notebook,
and no solution or hidden-test marker may survive."""

import re

import pytest

from tito import notebooks
from tito.manifest import Repo
from pathlib import Path

REPO = Repo.load(Path(__file__).resolve().parents[2])
PRESENT = [m for m in REPO.modules if REPO.path(m.source).exists()]
REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def distinctive(body: str) -> list[str]:
    """The lines of a region worth looking for: long enough that given code will not hold them by chance."""
    return [line.strip() for line in body.splitlines() if len(line.strip()) >= 30 and not line.strip().startswith("#")]


@pytest.mark.parametrize("module", PRESENT, ids=lambda m: m.id)
def test_no_solution_body_reaches_the_release(module):
    source = notebooks.read_source(REPO.path(module.source))
    release = notebooks.student_version(source)
    released = "\n".join(c.source for c in release.cells)
    given = "\n".join(REGION.sub("", HIDDEN.sub("", c.source)) for c in source.cells)  # what the student sees anyway
    bodies = [b for c in source.cells for b in REGION.findall(c.source)]
    assert bodies, f"{module.id} has no solution regions to check"
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
        assert marker not in released, f"{module.id}: {marker!r} reached the release"
    leaked = [line for body in bodies for line in distinctive(body) if line in released and line not in given]
    assert leaked == [], f"{module.id}: solution lines in the release: {leaked[:5]}"
    hidden = [line for c in source.cells for body in HIDDEN.findall(c.source) for line in distinctive(body)]
    leaked = [line for line in hidden if line in released and line not in given]
    assert leaked == [], f"{module.id}: hidden-test lines in the release: {leaked[:5]}"
