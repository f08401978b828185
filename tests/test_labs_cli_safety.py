"""Issue 26, the labs command line never writes over its inputs: `student --out` refuses the source folder and
any folder holding a solved notebook (even with --force), `grade --csv` refuses an input, every numeric option
is checked naming its flag, and a bad notebook or output path is one line on stderr, not a traceback. Fast:
nothing is graded."""

import shutil
from pathlib import Path

import nbformat
import pytest

from minimistral import labs

NOTEBOOKS = labs.default_notebooks()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def run(capsys, *argv):
    code = labs.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, *fragments):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def course(tmp_path):
    """A copy of two real (solved) notebooks in a folder of their own, as an instructor has them."""
    src = tmp_path / "course"
    src.mkdir()
    for p in NOTEBOOKS[1:3]:
        shutil.copy2(p, src / p.name)
    return src


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_student_out_refuses_the_source_folder(course, capsys, force):
    before = snapshot(course)
    notebooks = sorted(course.glob("*.ipynb"))
    code, _, err = run(capsys, "student", "--out", course, *notebooks, *force)
    assert code == 2
    one_line_error(err, f"--out {course}", "folder of the source notebook", "replace the solved notebooks")
    assert snapshot(course) == before
    bundle = course.parent / "bundle"  # a bundle whose notebooks/ would be the source folder
    shutil.copytree(course, bundle / "notebooks")
    before = snapshot(bundle)
    code, _, err = run(capsys, "student", "--bundle", "--out", bundle, *sorted(bundle.glob("notebooks/*.ipynb")), *force)
    assert code == 2
    one_line_error(err, "folder of the source notebook")
    assert snapshot(bundle) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_student_out_refuses_any_folder_holding_a_solved_notebook(course, tmp_path, capsys, force):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(NOTEBOOKS[1], other / NOTEBOOKS[1].name)  # a solved notebook, elsewhere
    before = snapshot(other)
    code, _, err = run(capsys, "student", "--out", other, *sorted(course.glob("*.ipynb")), *force)
    assert code == 2
    one_line_error(err, f"--out {other}", NOTEBOOKS[1].name, "with its solutions", "even with --force")
    assert snapshot(other) == before


def test_student_out_over_a_previous_student_edition_with_force(course, tmp_path, capsys):
    """What --force is for still works: a folder holding only a student edition (stubs) is rewritten."""
    out = tmp_path / "student"
    notebooks = sorted(course.glob("*.ipynb"))
    assert run(capsys, "student", "--out", out, *notebooks)[0] == 0
    first = snapshot(out)
    assert run(capsys, "student", "--out", out, *notebooks)[0] == 2  # not empty, no --force
    assert run(capsys, "student", "--out", out, *notebooks, "--force")[0] == 0
    assert snapshot(out) == first


def test_student_out_a_file_is_one_line(course, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("mine")
    for bundle in ([], ["--bundle"]):
        code, _, err = run(capsys, "student", "--out", f, *sorted(course.glob("*.ipynb")), *bundle)
        assert code == 2
        one_line_error(err, str(f), "is a file")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("content", [b"this is not json", b"", b'{"cells": 3}', b"\xff\xfe\x00"])
def test_a_notebook_that_is_not_one_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "01_bad.ipynb"
    bad.write_bytes(content)
    out = tmp_path / "out"
    code, _, err = run(capsys, "student", "--out", out, bad)
    assert code == 2
    one_line_error(err, str(bad))
    assert not out.exists() and bad.read_bytes() == content


def test_a_student_edition_is_written_whole_or_not_at_all(course, tmp_path, capsys):
    """A bad notebook after good ones: nothing is written (every notebook is read before any is written)."""
    bad = course / "99_bad.ipynb"
    bad.write_text("{")
    out = tmp_path / "out"
    code, _, err = run(capsys, "student", "--out", out, *sorted(course.glob("*.ipynb")))
    assert code == 2 and "99_bad.ipynb" in err and not out.exists()


def test_grade_csv_refuses_an_input(course, tmp_path, capsys):
    sub = tmp_path / "alice" / NOTEBOOKS[1].name
    sub.parent.mkdir()
    shutil.copy2(NOTEBOOKS[1], sub)
    before = sub.read_bytes()
    for csv in (sub, course / NOTEBOOKS[1].name, tmp_path / "alice", tmp_path / "grades.ipynb"):
        code, out, err = run(capsys, "grade", sub, "--source", course, "--csv", csv, "--allow-weak-isolation")
        assert code == 2, (csv, err)
        assert f"--csv {csv}" in err and "Traceback" not in err and out == ""
    assert sub.read_bytes() == before and snapshot(course) == snapshot(course)


@pytest.mark.parametrize("flag, value, culprit", [
    ("--max-alive", "0", "out of range"), ("--max-alive", "-3", "out of range"), ("--max-alive", "1000", "out of range"),
    ("--jobs", "0", "out of range"), ("--jobs", "two", "not an integer"),
    ("--timeout-cell", "-5", "out of range"), ("--timeout-cell", "0", "out of range"),
    ("--timeout-cell", "nan", "not a finite number"), ("--timeout-notebook", "inf", "not a finite number"),
    ("--timeout-notebook", "-1", "out of range"), ("--max-memory", "-1", "out of range"),
    ("--max-memory", "10", "out of range"), ("--max-output", "0", "out of range"), ("--max-procs", "0", "out of range"),
    ("--max-procs", "1.5", "not an integer"),
])
def test_every_numeric_grade_option_is_checked_naming_the_flag(tmp_path, capsys, flag, value, culprit):
    sub = tmp_path / NOTEBOOKS[1].name
    shutil.copy2(NOTEBOOKS[1], sub)
    with pytest.raises(SystemExit) as info:
        labs.main(["grade", str(sub), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and culprit in err and "Traceback" not in err


def test_max_memory_zero_still_means_no_limit():
    from minimistral.labs.cli import _number
    parse = _number(int, 64, 2**24, zero=True)
    assert parse("0") == 0 and parse("4096") == 4096
