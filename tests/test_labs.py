"""The course labs tool: student edition and bundle, nbgrader metadata, the checks' verdicts, grading real notebooks.

Hostile submissions are in test_labs_hostile.py, the message codec in test_labs_codec.py, the real nbgrader in
test_labs_nbgrader.py. Tests that grade start sandboxes (root and mount namespaces needed); they are slow.
"""

import contextlib
import csv
import io
import os
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


def exercise_nb(*extra_cells, solved=True):
    """A notebook with two exercises (solved or stubbed), plus any extra cells placed at the front."""
    body1 = "    ### BEGIN SOLUTION\n    return x * 2\n    ### END SOLUTION" if solved else \
        "    raise NotImplementedError()"
    body2 = "    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION" if solved else \
        "    raise NotImplementedError()"
    cells = [new_markdown_cell("# A synthetic lab"), *extra_cells, new_code_cell(CHECK_IMPORT),
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
    # solution cells are collapsed in JupyterLab (one click away), check cells are not; the twin keeps it
    for nb in (after, regenerated):
        assert [i for i, c in enumerate(nb.cells) if c.metadata.get("jupyter", {}).get("source_hidden")] == [2, 4]
    student = labs.student_notebook(after)
    assert not any(c.metadata.get("jupyter", {}).get("source_hidden") for c in student.cells)  # students see stubs


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
@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (run in the container)")
def test_student_edition_scores_zero_and_shipped_scores_full(tmp_path):
    student = tmp_path / "student"
    r = run_labs("student", "--out", student, *[REAL[n] for n in GRADED_REAL], subprocess_=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "grades.csv"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for n in GRADED_REAL:
        (shipped / n).write_bytes(REAL[n].read_bytes())
    r = run_labs("grade", *[student / n for n in GRADED_REAL], *[shipped / n for n in GRADED_REAL],
                 "--jobs", "2", "--csv", out)
    assert r.returncode == 0, r.stdout + r.stderr  # nothing flagged, no sandbox died
    rows = read_csv(out)
    for name in GRADED_REAL:
        expected = {e.id for e in labs.find_exercises(nbformat.read(REAL[name], 4))}
        shipped = {row["exercise"]: row["result"] for row in rows if row["file"] == str(tmp_path / "shipped" / name)}
        stub = {row["exercise"]: row["result"] for row in rows if row["file"] == str(student / name)}
        assert set(shipped) == set(stub) == expected
        assert set(shipped.values()) == {"pass"}, (name, shipped)
        assert set(stub.values()) == {"todo"}, (name, stub)


def test_checks_raise_by_default_and_not_when_turned_off(monkeypatch, capsys):
    from minimistral.labs.checks import CheckFailed, check_value
    monkeypatch.delenv("MINIMISTRAL_CHECKS_RAISE", raising=False)
    assert check_value("99.3 x", lambda: 2, 2) is True
    with pytest.raises(CheckFailed, match="99.3 x"):  # nbgrader scores the cell zero, nothing to configure
        check_value("99.3 x", lambda: 1, 2)
    with pytest.raises(AssertionError, match="not implemented"):
        check_value("99.3 x", lambda: (_ for _ in ()).throw(NotImplementedError()), 2)
    for off in ("0", "false", "No", "off"):
        monkeypatch.setenv("MINIMISTRAL_CHECKS_RAISE", off)
        assert check_value("99.3 x", lambda: 1, 2) is False
    monkeypatch.setenv("MINIMISTRAL_CHECKS_RAISE", "1")
    with pytest.raises(CheckFailed):
        check_value("99.3 x", lambda: 1, 2)
    out = capsys.readouterr().out
    assert out.count("[FAIL] 99.3 x") == 6 and "[TODO] 99.3 x" in out  # the verdict line is printed first


def test_verdict_line_has_one_writer_and_one_parser(capsys):
    from minimistral.labs import checks
    line = checks.verdict_line(checks.FAIL, "03.2 rope", "case 2\nof 4 differs")
    assert line == "[FAIL] 03.2 rope: case 2 of 4 differs"  # always one line
    assert checks.parse_verdicts("noise\n" + line + "\n[PASS] 03.1 angles: ok\n") == [
        ("FAIL", "03.2 rope", "case 2 of 4 differs"), ("PASS", "03.1 angles", "ok")]
    with checks.collect_verdicts() as sink:  # how the grader reads verdicts: no parsing, no raising
        assert checks.check_value("03.3 z", lambda: 1, 2) is False
    assert [(tag, ex) for tag, ex, _ in sink] == [("FAIL", "03.3 z")] and sink[0][2].startswith("not yet")
    assert checks.parse_verdicts(capsys.readouterr().out) == sink  # what it printed is what it reported


def test_tag_refuses_a_stale_twin_and_tags_the_others(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    paths = []
    for name in ("98_stale", "99_fine"):
        nb = exercise_nb()
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
    nb = exercise_nb()
    nb.cells.insert(1, new_markdown_cell("![diagram](img/block.png) and ![web](https://example.org/x.png)"))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "block.png").write_bytes(b"\x89PNG fake")
    src = write(nb, tmp_path / "99_lab.ipynb")
    written = labs.write_student_edition([src], tmp_path / "out")
    assert (tmp_path / "out" / "img" / "block.png").read_bytes() == b"\x89PNG fake"
    assert len(written) == 2


@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
def test_shipped_notebooks_collapse_their_solutions():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, 4)
        for ex in labs.find_exercises(nb, str(path)):
            for i in ex.solution_cells:
                assert nb.cells[i].metadata.get("jupyter", {}).get("source_hidden") is True, \
                    f"{path.name} cell {i} ({ex.id}): run `python -m minimistral.labs tag`"


@pytest.mark.skipif(not NOTEBOOKS, reason="no course notebooks yet")
def test_student_bundle_installs_without_any_solution(tmp_path):
    out = tmp_path / "bundle"
    r = run_labs("student", "--bundle", "--out", out, *NOTEBOOKS[:3])
    assert r.returncode == 0, r.stderr
    assert (out / "pyproject.toml").exists() and (out / "minimistral" / "model.py").exists()
    assert (out / "data" / "tokenizer.model").exists() and (out / "notebooks" / NOTEBOOKS[0].name).exists()
    assert not (out / ".git").exists() and not (out / "tests").exists()
    secret = set()
    for path in NOTEBOOKS:
        secret |= solution_lines(nbformat.read(path, 4)) - outside_solution_lines(nbformat.read(path, 4))
    secret = {s for s in secret if len(s) > 25}  # distinctive lines only
    # no solved notebook anywhere (the library itself is the reference, so its code may match a solution line:
    # calling it is what the grader's library rule catches)
    leaks = []
    shipped = {p.read_bytes() for p in NOTEBOOKS}
    for f in out.rglob("*"):
        if f.is_file() and (f.suffix in (".ipynb", ".md") or f.name.endswith(".py") and "notebooks" in f.parts):
            text = f.read_text(errors="replace")
            leaks += [(f.name, s) for s in secret if s in text]
        assert not (f.is_file() and f.read_bytes() in shipped), f"{f}: a shipped notebook in the bundle"
    assert not leaks, leaks[:3]
    # the library in the bundle finds its data in the bundle (what `pip install -e .` there gives)
    code = "import minimistral.train.corpus as c, minimistral.labs as l; print(c.DATA_DIR); print(l.NOTEBOOKS_DIR)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(out)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out / "data"), str(out / "notebooks")]


def test_csv_escapes_formulas(tmp_path):
    from minimistral.labs.grade import Graded, Row
    from minimistral.labs.report import write_csv
    g = Graded("=HYPERLINK(\"x\")/01.ipynb", "flagged", "", [Row("01.1 x", "fail", "@SUM(1)", ["-1+1"], 0.5)],
               1.0, ["+cmd"])
    write_csv([g], tmp_path / "g.csv")
    row = read_csv(tmp_path / "g.csv")[0]
    assert row["file"].startswith("'=") and row["hint"] == "'@SUM(1)" and row["flags"] == "'+cmd"
    assert row["result"] == "fail" and row["seconds"] == "0.5"


@pytest.mark.parametrize("event, args, flagged", [
    ("os.remove", ("/tmp/za1o1vjt", -1), False),  # tempfile's cleanup in the sandbox's private /tmp
    ("shutil.rmtree", ("/tmp/minimistral_spm_x", None), False),
    ("os.rename", ("/tmp/a", "/tmp/b", -1, -1), False),
    ("os.remove", ("/home/student/notebook.ipynb", -1), True),
    ("os.rename", ("/tmp/a", "/etc/passwd", -1, -1), True),  # out of /tmp: flagged
    ("shutil.rmtree", ("/tmp/../home", None), True),  # a path that only looks like /tmp
    ("os.kill", (-1, 9), True),
    ("open", ("/tmp/scratch.txt", "w", 0), False),
    ("open", ("/srv/planted.txt", "w", 0), True),
    ("open", ("/course/01_tokenizer.ipynb", "r", 0), True),
])
def test_audit_rule_lets_a_notebook_clean_its_own_tmp_files(event, args, flagged):
    from minimistral.labs.worker import audit_entry

    entry = audit_entry(event, args)
    assert (entry is not None) == flagged, entry
    if flagged:
        assert entry.startswith(event.split(".")[0])
