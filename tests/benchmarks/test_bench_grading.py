"""benchmarks/bench_grading.py times what it claims: a course whose submissions get the grades
of their kinds, graded the same with one job and with two."""

import pytest

from benchmarks import bench_grading
from tito import sandbox


@pytest.mark.skipif(sandbox.bwrap() is None, reason="bubblewrap (bwrap) is not available: apt-get install bubblewrap")
def test_the_benchmark_course_grades_each_kind_and_jobs_do_not_change_grades(tmp_path):
    root = bench_grading._course(tmp_path, 4)
    _, one = bench_grading._grade(root, 1)
    _, two = bench_grading._grade(root, 2)
    assert one == {"student00": 100.0, "student01": 0.0, "student02": 30.0, "student03": 70.0}
    assert two == one
