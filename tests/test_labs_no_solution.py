"""Issue 26, the student edition carries no solution anywhere: every solution line of every exercise of every
notebook is looked for in every cell of every stubbed notebook (not only the solution cells), in their outputs
and metadata, and in the files of the student bundle. Fast: no kernel runs."""

from pathlib import Path

import nbformat
import pytest

from minimistral import labs
from minimistral.labs.edition import student_notebook, write_bundle

NOTEBOOKS = labs.default_notebooks()
MIN_LEN = 20  # shorter lines (`return x`, `h = h + a`) are common code, not a giveaway
# A place gives a solution away when it holds all of one solution's distinctive lines, or at least this many of
# them: a single idiom shared with a teaching cell (`cache = model.new_cache()`) is not a solution.
ENOUGH = 3


def solutions(path) -> list:
    """(notebook, cell, distinctive lines) of every solution region of the notebook."""
    nb = nbformat.read(path, 4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = cell.source.split("\n")
        for begin, end, _ in labs.solution_regions(cell.source):
            lines = frozenset(s.strip() for s in src[begin + 1:end] if len(s.strip()) >= MIN_LEN)
            if lines:
                found.append((path.name, i, lines))
    return found


SOLUTIONS = [s for p in NOTEBOOKS for s in solutions(p)]


def leaked(text: str) -> list:
    """(notebook, cell, lines found) of each solution that `text` gives away."""
    out = []
    for name, cell, lines in SOLUTIONS:
        hits = sorted(line for line in lines if line in text)
        if hits and (len(hits) == len(lines) or len(hits) >= ENOUGH):
            out.append((f"{name} cell {cell}", hits))
    return out


def strings(obj) -> str:
    """Every string inside a JSON-like value, joined by newlines (json.dumps would escape quotes and newlines)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return "\n".join(strings(k) + "\n" + strings(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return "\n".join(map(strings, obj))
    return str(obj)


def places(nb):
    """(where, text) of everything a student's file holds: each cell's source, outputs and metadata, and the
    notebook's metadata."""
    yield "notebook metadata", strings(nb.metadata)
    for i, cell in enumerate(nb.cells):
        yield f"cell {i} source", cell.source
        yield f"cell {i} metadata", strings(cell.metadata)
        if cell.cell_type == "code":
            yield f"cell {i} outputs", strings(cell.get("outputs", []))
        if cell.get("attachments"):
            yield f"cell {i} attachments", strings(cell.attachments)


def leaks_in(nb) -> list:
    """(where, whose solution, its lines found) for every place of `nb` that gives a solution away."""
    return [(where, whose, hits) for where, text in places(nb) for whose, hits in leaked(text)]


def test_there_are_solutions_to_look_for():
    assert len(SOLUTIONS) >= 20 and sum(len(lines) for *_, lines in SOLUTIONS) >= 60


def test_the_search_finds_a_solution_line_planted_outside_the_solution_cell():
    """The test can fail: a solution line copied into another cell, an output, or metadata is found."""
    name, _, lines = next(s for s in SOLUTIONS if len(s[2]) >= 2)
    path = next(p for p in NOTEBOOKS if p.name == name)
    text = "\n    ".join(sorted(lines))
    for plant in ("source", "output", "metadata"):
        nb = student_notebook(nbformat.read(path, 4), str(path))
        cell = nbformat.v4.new_code_cell("x = 1")
        if plant == "source":
            cell.source = f"def helper():\n    {text}\n"
        elif plant == "output":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        else:
            cell.metadata["note"] = text
        nb.cells.insert(3, cell)
        assert any(w.startswith(f"cell 3 {plant}") and set(hits) == lines for w, _, hits in leaks_in(nb)), plant
    one = sorted(lines)[0]  # one shared line alone is not a solution
    assert not leaked(f"x = 1\n{one}\n") or len(lines) == 1


# Notebook 13's `absmax_int8` (a non-exercise cell) repeated exercise 13.1's three solution lines; its owner
# (the "part2" engineer) was asked to fix that cell. Marked xfail only while that cell is unfixed.
def _known_unfixed(path: Path) -> bool:
    if not path.name.startswith("13_"):
        return False
    nb = student_notebook(nbformat.read(path, 4), str(path))
    return any("absmax_int8" in nb.cells[int(w.split()[1])].source for w, _, _ in leaks_in(nb) if w.endswith("source"))


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="notebook 13: absmax_int8 repeats 13.1's solution "
                                                                "(owned by part2; to be fixed there)"))
    if _known_unfixed(p) else p for p in NOTEBOOKS], ids=lambda p: p.name[:2])
def test_no_solution_line_anywhere_in_a_stubbed_notebook(path):
    nb = student_notebook(nbformat.read(path, 4), str(path))
    leaks = leaks_in(nb)
    assert not leaks, [f"{path.name} {where}: gives away the solution of {whose}: {hits}" for where, whose, hits in leaks[:5]]


def test_no_solution_line_in_the_bundles_notebooks_and_texts(tmp_path):
    """The bundle's notebooks (every one) and its text files outside the library (README, pyproject, data's
    texts): the library itself is the reference implementation, which the grader's library rule covers."""
    clean = [p for p in NOTEBOOKS if not _known_unfixed(p)]
    out = tmp_path / "bundle"
    write_bundle(clean, out)
    leaks = []
    for f in sorted(out.rglob("*")):
        if not f.is_file() or "minimistral" in f.relative_to(out).parts:
            continue
        if f.suffix == ".ipynb":
            leaks += [(f.name, *leak) for leak in leaks_in(nbformat.read(f, 4))]
        elif f.suffix in (".md", ".txt", ".toml", ".yml", ".py", ".json", ".cfg"):
            text = f.read_text(errors="replace")
            leaks += [(f.name, "text", *leak) for leak in leaked(text)]
    assert len(list(out.joinpath("notebooks").glob("*.ipynb"))) == len(clean)
    assert not leaks, leaks[:5]
