"""Finding exercises in a notebook: solution regions, check calls, and the exercise list.

An exercise is a function whose solution sits between `### BEGIN SOLUTION` and `### END SOLUTION` lines in its
body (nbgrader's markers); a later cell calls `check_function("NN.k name", ...)` or `check_value(...)`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# nbgrader's own replacement text, so the two routes give students the same stub (we keep the markers around it).
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
# The first argument of a check call is the exercise id "NN.k name" (a newline may follow the parenthesis).
CHECK_CALL = re.compile(r"\bcheck_(?:function|value)\(\s*([\"'])(\d\d\.\d+ [^\"'\n]+)\1")


class LabsError(Exception):
    """A notebook the tool cannot handle; the message names the file and cell."""


# ----------------------------------------------------------------------------------------------------------------
# Finding exercises


def solution_regions(source: str, where: str = "") -> list[tuple[int, int, str]]:
    """(begin_line, end_line, indent) of every BEGIN/END SOLUTION pair in a cell's source, 0-based lines."""
    regions, begin = [], None
    for i, line in enumerate(source.split("\n")):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise LabsError(f"{where} line {i + 1}: a second '{BEGIN}' before '{END}' (line {begin + 1})")
            begin = i
        elif text == END:
            if begin is None:
                raise LabsError(f"{where} line {i + 1}: '{END}' without a '{BEGIN}' above it")
            regions.append((begin, i, line[: len(line) - len(line.lstrip())]))
            begin = None
    if begin is not None:
        raise LabsError(f"{where} line {begin + 1}: '{BEGIN}' has no matching '{END}'")
    return regions


def check_ids(source: str) -> list[str]:
    """Exercise ids named by the check calls in a cell, in order."""
    return [m.group(2) for m in CHECK_CALL.finditer(source)]


@dataclass
class Exercise:
    id: str                  # "03.1 rope_angles": the first id checked by its check cell
    check_cell: int          # index of the cell that calls check_function / check_value
    solution_cells: list[int] = field(default_factory=list)  # cells with solution regions since the last check

    @property
    def grade_id(self) -> str:  # nbgrader wants [A-Za-z0-9_-]
        return "ex" + re.sub(r"[^A-Za-z0-9]+", "_", self.id).strip("_")


def find_exercises(nb, where: str = "") -> list[Exercise]:
    """Pair each check cell with the solution cells above it (since the previous check cell)."""
    exercises, pending = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        has_solution = bool(solution_regions(cell.source, f"{where} cell {i}"))
        ids = check_ids(cell.source)
        if has_solution and ids:
            raise LabsError(f"{where} cell {i}: a cell holds both a solution and a check ({ids[0]}); "
                            "put the check in the next cell")
        if has_solution:
            pending.append(i)
        elif ids:
            exercises.append(Exercise(ids[0], i, pending))
            pending = []
    if pending:
        raise LabsError(f"{where} cell {pending[0]}: a solution cell with no check cell after it")
    seen = set()
    for ex in exercises:
        if ex.grade_id in seen:
            raise LabsError(f"{where} cell {ex.check_cell}: exercise id {ex.id!r} is used twice")
        seen.add(ex.grade_id)
    return exercises


def default_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebooks_or_default(paths: list[Path]) -> list[Path]:
    paths = list(paths) or default_notebooks()
    if not paths:
        raise LabsError(f"no NN_*.ipynb notebooks in {NOTEBOOKS_DIR} (is this a clone of the repository?); "
                        "name the notebooks on the command line")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise LabsError(f"{missing[0]}: no such notebook")
    return paths




def defined_names(source: str) -> list[str]:
    """Top-level functions and classes a cell defines (the names an exercise's solution cell gives the check)."""
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def python_source(source: str) -> str:
    """A cell's source as plain Python (%magics and !shell lines become get_ipython() calls)."""
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell(source)
