"""The course labs tool: student edition, grading (with hostile submissions), nbgrader metadata.

The grading tests start real Jupyter kernels; they are marked slow but run in the default suite. Each test that
grades does it in ONE `labs grade` call with --jobs 2, so the notebooks share the wall-clock time.
"""

import contextlib
import csv
import io
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minimistral import labs

NOTEBOOKS = labs.default_notebooks()
REAL = {p.name: p for p in NOTEBOOKS}
# The two real notebooks graded in the suite (quick ones; each has exercises). Fall back to the first two.
GRADED_REAL = [n for n in ("02_embeddings_and_rmsnorm.ipynb", "06_swiglu_mlp.ipynb") if n in REAL] \
    or [p.name for p in NOTEBOOKS[1:3]]


def run_labs(*args, subprocess_=False, timeout=600):
    """The command line, in this process (the grader still starts a process per submission), or as
    `python -m minimistral.labs` in a subprocess."""
    args = list(map(str, args))
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "minimistral.labs", *args], capture_output=True, text=True,
                              timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = labs.main(args)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def solution_lines(nb):
    """Every non-blank line strictly between the markers, stripped."""
    lines = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src = cell.source.split("\n")
        for begin, end, _ in labs.solution_regions(cell.source):
            lines.update(s.strip() for s in src[begin + 1:end] if s.strip())
    return lines


def outside_solution_lines(nb):
    lines = set()
    for cell in nb.cells:
        src = cell.source.split("\n")
        inside = set()
        if cell.cell_type == "code":
            for begin, end, _ in labs.solution_regions(cell.source):
                inside.update(range(begin, end + 1))
        lines.update(s.strip() for n, s in enumerate(src) if n not in inside)
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Synthetic notebooks

CHECK_IMPORT = "from minimistral.labs.checks import check_function, check_value"
# For the grading test: the same verdict lines as minimistral.labs.checks without importing torch, so that a short
# per-cell timeout can be used (the real checks are graded in test_student_edition_scores_zero_and_shipped_scores_full).
LIGHT_CHECKS = """\
def _verdict(exercise, call, ok, hint):
    try:
        value = call()
    except NotImplementedError:
        return print(f"[TODO] {exercise}: not implemented yet")
    except Exception as e:
        return print(f"[FAIL] {exercise}: raised {type(e).__name__}. {hint}")
    print(f"[PASS] {exercise}: correct" if ok(value) else f"[FAIL] {exercise}: {hint}")

def check_function(exercise, student, reference, cases, hint=""):
    _verdict(exercise, lambda: [student(*c) for c in cases], lambda v: v == [reference(*c) for c in cases], hint)

def check_value(exercise, answer, expected, hint=""):
    _verdict(exercise, answer, lambda v: v == expected, hint)"""


def exercise_nb(*extra_cells, solved=True, light=False):
    """A notebook with two exercises (solved or stubbed), plus any extra cells placed at the front."""
    body1 = "    ### BEGIN SOLUTION\n    return x * 2\n    ### END SOLUTION" if solved else \
        "    raise NotImplementedError()"
    body2 = "    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION" if solved else \
        "    raise NotImplementedError()"
    cells = [new_markdown_cell("# A synthetic lab"), *extra_cells, new_code_cell(LIGHT_CHECKS if light else CHECK_IMPORT),
             new_code_cell("def double(x):\n    '''Twice x.'''\n" + body1),
             new_code_cell('_ = check_function("99.1 double", double, lambda x: 2 * x, cases=[(1,), (0,), (-3,)],\n'
                           '                   hint="multiply by two")'),
             new_code_cell("def answer():\n" + body2),
             new_code_cell('_ = check_value("99.2 answer", answer, 42, hint="the answer")'),
             new_code_cell("print('the end')")]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def write(nb, path):
    nbformat.write(nb, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parsing and the student edition (fast, no kernels)


def test_solution_regions_and_errors():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x\n    return y\n    ### END SOLUTION\n"
    assert labs.solution_regions(src) == [(1, 4, "    ")]
    stub = "def f(x):\n    ### BEGIN SOLUTION\n    # YOUR CODE HERE\n    raise NotImplementedError()\n" \
           "    ### END SOLUTION\n"
    assert labs.stub_source(src) == stub
    assert labs.stub_source(stub) == stub  # stubbing a student edition again changes nothing
    with pytest.raises(labs.LabsError, match="no matching"):
        labs.solution_regions("def f():\n    ### BEGIN SOLUTION\n    pass\n", "nb.ipynb cell 3")
    with pytest.raises(labs.LabsError, match="without a"):
        labs.solution_regions("    ### END SOLUTION\n")
    # a check call written over several lines still names its exercise
    assert labs.check_ids('check_function(\n    "01.2 bpe_merge", f, g)\ncheck_value("01.3 x", a, 1)') == \
        ["01.2 bpe_merge", "01.3 x"]


def test_student_edition_keeps_indentation_and_clears_exercise_outputs():
    nb = exercise_nb()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output\n")]
            cell.execution_count = 7
    student = labs.student_notebook(nb)
    exercises = labs.find_exercises(nb)
    assert [(e.id, e.solution_cells, e.check_cell) for e in exercises] == [("99.1 double", [2], 3),
                                                                           ("99.2 answer", [4], 5)]
    assert student.cells[2].source == "def double(x):\n    '''Twice x.'''\n    ### BEGIN SOLUTION\n" \
                                      "    # YOUR CODE HERE\n    raise NotImplementedError()\n    ### END SOLUTION"
    for i, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        cleared = i in (2, 3, 4, 5)
        assert (cell.outputs == []) == cleared, i
        assert (cell.execution_count is None) == cleared, i
    assert nb.cells[2].outputs, "the shipped notebook must not be modified"


def test_student_edition_rejects_a_solution_outside_a_function(tmp_path):
    nb = exercise_nb()
    nb.cells.insert(2, new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))
    with pytest.raises(labs.LabsError, match="not indented"):
        labs.student_notebook(nb, "bad.ipynb")


def test_student_command_refuses_non_empty_folder(tmp_path):
    src = write(exercise_nb(), tmp_path / "99_lab.ipynb")
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("keep me")
    r = run_labs("student", "--out", out, src)
    assert r.returncode == 2 and str(out) in r.stderr and "--force" in r.stderr
    assert not (out / "99_lab.ipynb").exists()
    r = run_labs("student", "--out", out, "--force", src)
    assert r.returncode == 0, r.stderr
    assert (out / "99_lab.ipynb").exists() and (out / "something").read_text() == "keep me"


@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_real_notebook_exercises_and_student_edition(path):
    nb = nbformat.read(path, as_version=4)
    exercises = labs.find_exercises(nb, str(path))
    if not path.name.startswith("00_"):
        assert 1 <= len(exercises), f"{path.name}: every notebook from 01 on has exercises"
    for ex in exercises:
        assert ex.solution_cells, f"{path.name}: {ex.id} has no solution cell"
    student = labs.student_notebook(nb, str(path))
    # no solution code: every line between the markers is gone, unless the notebook also has it elsewhere
    text = {t.strip() for c in student.cells for t in c.source.split("\n")}
    allowed = outside_solution_lines(nb)
    leaked = [s for s in solution_lines(nb) - allowed if s in text]
    assert not leaked, f"{path.name}: solution lines in the student edition: {leaked[:3]}"
    assert solution_lines(student) == (set(labs.STUB) if exercises else set())  # only the stub between markers
    # and nothing else changed
    assert len(student.cells) == len(nb.cells)
    clear = {i for ex in exercises for i in ex.solution_cells + [ex.check_cell]}
    for i, (a, b) in enumerate(zip(nb.cells, student.cells)):
        if i in clear:
            continue
        assert a.source == b.source and a.get("outputs") == b.get("outputs"), f"{path.name} cell {i} changed"


# ---------------------------------------------------------------------------------------------------------------
# nbgrader metadata


def test_tag_is_idempotent_and_survives_jupytext_regeneration(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nb = exercise_nb()
    py = tmp_path / "99_lab.py"
    jupytext.write(nb, py, fmt="py:percent")
    ipynb = write(jupytext.read(py), tmp_path / "99_lab.ipynb")  # the .ipynb as jupytext makes it from the .py
    before = nbformat.read(ipynb, 4)
    assert set(map(str, labs.tag([ipynb]))) == {str(ipynb), str(py)}
    assert labs.tag([ipynb]) == []  # idempotent
    after = nbformat.read(ipynb, 4)
    assert [c.source for c in after.cells] == [c.source for c in before.cells]
    meta = {i: c.metadata.get("nbgrader") for i, c in enumerate(after.cells) if "nbgrader" in c.metadata}
    assert meta == {
        2: {"grade": False, "grade_id": "ex99_1_double-solution", "locked": False, "schema_version": 3,
            "solution": True, "task": False},
        3: {"grade": True, "grade_id": "ex99_1_double-check", "locked": True, "points": 1, "schema_version": 3,
            "solution": False, "task": False},
        4: {"grade": False, "grade_id": "ex99_2_answer-solution", "locked": False, "schema_version": 3,
            "solution": True, "task": False},
        5: {"grade": True, "grade_id": "ex99_2_answer-check", "locked": True, "points": 1, "schema_version": 3,
            "solution": False, "task": False}}
    # regenerating the notebook from the .py twin (what authors do) keeps the metadata
    regenerated = jupytext.read(py)
    assert {i: c.metadata.get("nbgrader") for i, c in enumerate(regenerated.cells)
            if "nbgrader" in c.metadata} == meta
    assert [c.source for c in regenerated.cells] == [c.source for c in before.cells]
    assert run_labs("tag", "--check", ipynb).returncode == 0


@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
def test_tag_changes_only_metadata_on_real_notebooks(tmp_path):
    for path in NOTEBOOKS[:4]:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        twin = path.with_suffix(".py")
        if twin.exists():
            (tmp_path / twin.name).write_bytes(twin.read_bytes())
        labs.tag([copy])
        a, b = nbformat.read(path, 4), nbformat.read(copy, 4)
        assert [(c.source, c.get("outputs")) for c in a.cells] == [(c.source, c.get("outputs")) for c in b.cells]
        n = sum("nbgrader" in c.metadata for c in b.cells)
        assert n == sum(len(e.solution_cells) + 1 for e in labs.find_exercises(b))


# ---------------------------------------------------------------------------------------------------------------
# Grading (starts kernels)


@pytest.mark.slow
def test_grading_contains_hostile_submissions(tmp_path):
    subs = tmp_path / "submissions"
    for name in ("good", "todo", "hostile_loops", "flood", "import_error", "os_exit", "broken"):
        (subs / name).mkdir(parents=True)
    write(exercise_nb(light=True), subs / "good" / "99_lab.ipynb")
    write(exercise_nb(solved=False, light=True), subs / "todo" / "99_lab.ipynb")
    # exercise 1 loops (interruptible: the cell times out, the rest is still graded), then a loop that ignores
    # SIGINT: only the whole-notebook limit stops it
    loops = exercise_nb(light=True)
    loops.cells[2].source = "def double(x):\n    while True:\n        pass"
    loops.cells.insert(6, new_code_cell("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                        "while True:\n    pass"))
    write(loops, subs / "hostile_loops" / "99_lab.ipynb")
    # prints megabytes, before the checks
    write(exercise_nb(new_code_cell("for _ in range(100):\n    print('x' * 100_000)"), light=True), subs / "flood" / "99_lab.ipynb")
    # fails at import, and a later cell raises SystemExit: both are errors in a notebook that runs to the end
    imp = exercise_nb(new_code_cell("import nonexistent_module_for_the_grader_test"),
                      new_code_cell("raise SystemExit('bye')"), light=True)
    write(imp, subs / "import_error" / "99_lab.ipynb")
    write(exercise_nb(new_code_cell("import os\nos._exit(3)"), light=True), subs / "os_exit" / "99_lab.ipynb")
    (subs / "broken" / "99_lab.ipynb").write_text("{ this is not a notebook")

    out = tmp_path / "grades.csv"
    r = run_labs("grade", subs, "--jobs", "2", "--timeout-cell", "6", "--timeout-notebook", "20",
                 "--max-output", "1000000", "--csv", out)
    assert r.returncode == 1, r.stdout + r.stderr  # some notebooks could not run
    rows = read_csv(out)
    by = {(Path(row["file"]).parent.name, row["exercise"]): row for row in rows}
    status = {Path(row["file"]).parent.name: row["notebook_status"] for row in rows}
    # the good one and the unsolved one are graded as if alone
    assert by["good", "99.1 double"]["result"] == "pass" and by["good", "99.2 answer"]["result"] == "pass"
    assert status["good"] == "ok"
    assert by["todo", "99.1 double"]["result"] == "todo" and by["todo", "99.2 answer"]["result"] == "todo"
    assert status["todo"] == "ok"
    # interruptible loop: exercise 1 did not pass, exercise 2 was still graded; then the notebook limit hit
    # (KeyboardInterrupt is not an Exception: the check cell itself raises, and the grader says so)
    assert by["hostile_loops", "99.1 double"]["result"] == "error"
    assert "KeyboardInterrupt" in by["hostile_loops", "99.1 double"]["hint"]
    assert by["hostile_loops", "99.2 answer"]["result"] == "pass"
    assert status["hostile_loops"] == "timeout"
    assert float(by["hostile_loops", "99.1 double"]["seconds"]) < 80
    # the flood is cut at the output limit; its exercises never ran
    assert status["flood"] == "output-limit"
    assert {by["flood", x]["result"] for x in ("99.1 double", "99.2 answer")} == {"not run"}
    # an import error and SystemExit are errors, but the exercises after them are graded
    assert status["import_error"] == "error" and "ModuleNotFoundError" in by["import_error", "99.1 double"][
        "notebook_detail"]
    assert by["import_error", "99.1 double"]["result"] == "pass"
    # os._exit kills the kernel: reported, nothing graded, nothing else disturbed
    assert status["os_exit"] == "died"
    assert by["os_exit", "99.1 double"]["result"] == "not run"
    assert status["broken"] == "unreadable"
    # the printed table names every file
    for name in status:
        assert name in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
def test_student_edition_scores_zero_and_shipped_scores_full(tmp_path):
    student = tmp_path / "student"
    r = run_labs("student", "--out", student, *[REAL[n] for n in GRADED_REAL], subprocess_=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "grades.csv"
    r = run_labs("grade", *[student / n for n in GRADED_REAL], *[REAL[n] for n in GRADED_REAL],
                 "--jobs", "2", "--csv", out)
    assert r.returncode == 0, r.stdout + r.stderr  # every notebook ran top to bottom without an error
    rows = read_csv(out)
    for name in GRADED_REAL:
        expected = {e.id for e in labs.find_exercises(nbformat.read(REAL[name], 4))}
        shipped = {row["exercise"]: row["result"] for row in rows if row["file"] == str(REAL[name])}
        stub = {row["exercise"]: row["result"] for row in rows if row["file"] == str(student / name)}
        assert set(shipped) == set(stub) == expected
        assert set(shipped.values()) == {"pass"}, (name, shipped)
        assert set(stub.values()) == {"todo"}, (name, stub)


def test_checks_raise_for_nbgrader_only_when_asked(monkeypatch, capsys):
    from minimistral.labs.checks import check_value
    assert check_value("99.3 x", lambda: 1, 2) is False  # the default never raises
    monkeypatch.setenv("MINIMISTRAL_CHECKS_RAISE", "1")
    assert check_value("99.3 x", lambda: 2, 2) is True
    with pytest.raises(AssertionError, match="99.3 x"):
        check_value("99.3 x", lambda: 1, 2)
    with pytest.raises(AssertionError, match="not implemented"):
        check_value("99.3 x", lambda: (_ for _ in ()).throw(NotImplementedError()), 2)
    out = capsys.readouterr().out
    assert out.count("[FAIL] 99.3 x") == 2 and "[TODO] 99.3 x" in out  # the verdict line is printed first


def test_tag_refuses_a_stale_twin_and_tags_the_others(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    paths = []
    for name in ("98_stale", "99_fine"):
        nb = exercise_nb(light=True)
        jupytext.write(nb, tmp_path / f"{name}.py", fmt="py:percent")
        paths.append(write(jupytext.read(tmp_path / f"{name}.py"), tmp_path / f"{name}.ipynb"))
    stale_py = tmp_path / "98_stale.py"
    stale_py.write_text(stale_py.read_text().replace("return x * 2", "return x + x"))  # edited, not regenerated
    before = paths[0].read_bytes(), stale_py.read_bytes()
    with pytest.raises(labs.LabsError, match="98_stale.py: its cells differ"):
        labs.tag(paths)
    errors = []
    changed = labs.tag(paths, errors=errors)
    assert len(errors) == 1 and "98_stale.py" in errors[0]
    assert set(changed) == {paths[1], tmp_path / "99_fine.py"}
    assert (paths[0].read_bytes(), stale_py.read_bytes()) == before  # nothing half-written


@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
def test_shipped_notebooks_carry_nbgrader_metadata():
    errors = []
    stale = labs.tag(NOTEBOOKS, write=False, errors=errors)
    assert not errors, errors
    assert not stale, f"run `python -m minimistral.labs tag` (these lack nbgrader metadata): {stale}"


def test_student_edition_copies_local_images(tmp_path):
    nb = exercise_nb(light=True)
    nb.cells.insert(1, new_markdown_cell("![diagram](img/block.png) and ![web](https://example.org/x.png)"))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "block.png").write_bytes(b"\x89PNG fake")
    src = write(nb, tmp_path / "99_lab.ipynb")
    written = labs.write_student_edition([src], tmp_path / "out")
    assert (tmp_path / "out" / "img" / "block.png").read_bytes() == b"\x89PNG fake"
    assert len(written) == 2
