"""The nbgrader route with the real nbgrader: generate the assignment, autograde a solved, an unsolved and a wrong
submission, export the grades; and `nbgrader validate` must not call an unsolved notebook a success.

Nothing is configured for the checks: they raise on [FAIL]/[TODO] by default, which is how nbgrader scores zero.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minimistral import labs
from test_labs import exercise_nb, write

pytestmark = pytest.mark.slow
nbgrader = pytest.importorskip("nbgrader")


def run(course: Path, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "MINIMISTRAL_CHECKS_RAISE"}  # nothing to remember
    env["PYTHONPATH"] = str(Path(labs.__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_nbgrader_scores_unsolved_and_wrong_zero_with_nothing_configured(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'minimistral'\n"
        "c.ExecutePreprocessor.timeout = 120\n")
    src = write(exercise_nb(), course / "source" / "ps1" / "99_lab.ipynb")
    labs.tag([src], twins=False)  # the metadata the shipped notebooks carry

    r = run(course, "generate_assignment", "ps1", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    released = course / "release" / "ps1" / "99_lab.ipynb"
    assert "raise NotImplementedError()" in released.read_text() and "return x * 2" not in released.read_text()

    # what students hand in (collection puts each in submitted/<student>/<assignment>/)
    wrong = nbformat.read(released, 4)
    for cell in wrong.cells:
        cell.source = cell.source.replace("raise NotImplementedError()", "return 0")
    for student, nb in (("solved", nbformat.read(src, 4)), ("unsolved", nbformat.read(released, 4)),
                        ("wrong", wrong)):
        (course / "submitted" / student / "ps1").mkdir(parents=True)
        write(nb, course / "submitted" / student / "ps1" / "99_lab.ipynb")

    r = run(course, "autograde", "ps1", "--create", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(course, "export", "--to", str(tmp_path / "grades.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "grades.csv", newline="") as f:
        scores = {row["student_id"]: (float(row["score"]), float(row["max_score"])) for row in csv.DictReader(f)}
    assert scores == {"solved": (2.0, 2.0), "unsolved": (0.0, 2.0), "wrong": (0.0, 2.0)}, scores

    # a student checking their work before handing it in
    r = run(course, "validate", str(released))
    assert "Success" not in r.stdout and ("failed" in r.stdout.lower() or "error" in r.stdout.lower()), r.stdout
    solved_copy = tmp_path / "solved.ipynb"
    shutil.copy(src, solved_copy)
    r = run(course, "validate", str(solved_copy))
    assert "Success" in r.stdout, r.stdout + r.stderr
