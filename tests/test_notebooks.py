"""Every course notebook: reviewable twin in sync, the standard sections, a figure, an exercise, clean outputs.

(Execution and output comparison are `pytest --nbval`'s job; this checks what nbval does not.)
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
COURSE = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb, kind):
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.fixture(params=COURSE, ids=[p.stem for p in COURSE])
def notebook(request):
    return request.param, json.loads(request.param.read_text())


def test_the_course_has_its_notebooks():
    numbers = {p.name[:2] for p in COURSE}
    assert {"00", "01", "02", "03", "04", "05", "06"} <= numbers, f"Part I incomplete: {sorted(numbers)}"


def test_jupytext_twin_in_sync(notebook):
    jupytext = pytest.importorskip("jupytext")
    path, nb = notebook
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{twin.name} missing: write notebooks as jupytext percent scripts"
    from_py = jupytext.read(twin)
    want = [(c.cell_type, c.source.strip()) for c in from_py.cells]
    got = [(c["cell_type"], _source(c).strip()) for c in nb["cells"]]
    assert got == want, (f"{path.name} and {twin.name} differ: regenerate with "
                         f"`cd notebooks && jupytext --to notebook --set-kernel python3 --execute {twin.name}` "
                         f"(then python .ci/clean_notebooks.py notebooks/{path.name}), or `jupytext --sync` it")


def test_jupytext_pairs_every_notebook_with_its_twin(notebook):
    """notebooks/jupytext.toml pairs the folder, so JupyterLab and `jupytext --sync` keep both files in step."""
    pytest.importorskip("jupytext")
    from jupytext.config import load_jupytext_config
    from jupytext.paired_paths import paired_paths
    path, _ = notebook
    config = load_jupytext_config(str(path))
    assert config is not None, "no jupytext configuration found for the notebooks (notebooks/jupytext.toml)"
    formats = config.default_formats(str(path))
    paired = {Path(p).name for p, _ in paired_paths(str(path), "ipynb", formats)}
    assert paired == {path.name, path.with_suffix(".py").name}, f"{path.name} is paired with {paired}"


def test_no_per_run_metadata(notebook):
    path, nb = notebook
    stamped = [i for i, c in enumerate(nb["cells"]) if {"execution", "ExecuteTime"} & set(c.get("metadata", {}))]
    assert not stamped, (f"{path.name}: cells {stamped[:5]} carry execution times; "
                         f"run `python .ci/clean_notebooks.py notebooks/{path.name}`")


def test_opens_and_closes_properly(notebook):
    path, nb = notebook
    md = [_source(c) for c in _cells(nb, "markdown")]
    opening = "\n".join(md[:3]).lower()
    assert "what you will learn" in opening, f"{path.name}: opening section lacks 'What you will learn'"
    assert "what you need" in opening, f"{path.name}: opening section lacks 'What you need'"
    closing = "\n".join(md[-3:]).lower()
    assert "summary" in closing, f"{path.name}: no closing summary"


def test_has_a_figure(notebook):
    path, nb = notebook
    images = [o for c in _cells(nb, "code") for o in c.get("outputs", [])
              if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})]
    assert images, f"{path.name}: no figure in the stored outputs"


def test_has_a_checked_exercise(notebook):
    path, nb = notebook
    code = [_source(c) for c in _cells(nb, "code")]
    solutions = [s for s in code if "### BEGIN SOLUTION" in s and "### END SOLUTION" in s]
    assert solutions, f"{path.name}: no exercise with ### BEGIN SOLUTION / ### END SOLUTION markers"
    from minimistral.labs.checks import parse_verdicts  # the one parser of the verdict format

    verdicts = [v for c in _cells(nb, "code") for o in c.get("outputs", []) if o.get("output_type") == "stream"
                for v in parse_verdicts("".join(o.get("text", "")))]
    assert verdicts, f"{path.name}: no exercise check ran ([PASS]/[FAIL]/[TODO] line) in the stored outputs"
    assert all(tag == "PASS" for tag, _, _ in verdicts), f"{path.name}: shipped solutions must pass: {verdicts}"


def test_every_cell_executed_without_errors(notebook):
    path, nb = notebook
    for i, cell in enumerate(_cells(nb, "code")):
        if not _source(cell).strip():
            continue
        assert cell.get("execution_count") is not None, f"{path.name}: code cell {i} was never executed"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: code cell {i} stored an error: {errors[0].get('ename')}"
