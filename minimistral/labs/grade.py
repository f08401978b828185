"""Grading: the instructor's notebook runs in the grader, the student's functions run in a sandbox.

For each source notebook (the instructor's, from --source or the shipped notebooks/) a trusted worker process
runs the source top to bottom, once. Every submission of that notebook gets a sandbox (labs/sandbox.py) that
has run only the submission's definitions (imports, functions, classes, constants; all its non-check cells
with --full, or when a definition needs something they compute). At each check cell the worker runs the
SOURCE's check cell once per submission, with the exercise's functions replaced by proxies that call the
student's versions in the sandbox: inputs go out and results come back as plain data (labs/codec.py), and the
comparison with the references happens here, where the submission cannot reach. The submission's own check
cells are never run; edited, deleted or duplicated ones are flagged.
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .exercises import LabsError, check_ids, defined_names, python_source, solution_regions

SOLUTION_PREFIX, CELL_PREFIX = "<instructor solution cell ", "<instructor cell "


@dataclass
class Row:
    exercise: str
    result: str          # pass, fail, todo, error, library, not run
    hint: str = ""
    flags: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Graded:
    file: str
    status: str          # ok, flagged, died, timeout, unreadable, no-source
    detail: str
    rows: list
    seconds: float
    flags: list = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.result == "pass" for r in self.rows)


# ----------------------------------------------------------------------------------------------------------------
# Reading a submission against its source


def _norm(src: str) -> str:
    return "\n".join(line.rstrip() for line in src.strip().split("\n"))


def _scaffold(src: str) -> str:
    """A solution cell without what is between its markers (what the student was not meant to change)."""
    lines = src.split("\n")
    try:
        for b, e, _ in reversed(solution_regions(src)):
            lines[b + 1:e] = []
    except LabsError:
        pass
    return _norm("\n".join(lines))


def _is_check_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(check_ids(cell.source)) or (meta.get("grade") and not meta.get("solution"))


def _definitions(python: str) -> str:
    """Only what defines things: imports, functions, classes and constants computed without a call."""
    tree = ast.parse(python)
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and all(
                isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List, ast.Load, ast.operator,
                               ast.unaryop)) for n in ast.walk(node.value)):
            keep.append(node)  # a constant (W = 4096); anything computed comes from --full or the fallback
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) if keep else ""


def submission_cells(nb, full: bool) -> tuple[list, list]:
    """(label, python) to run in the sandbox, and the cells that could not be read."""
    cells, errors = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or _is_check_cell(cell):
            continue
        try:
            code = python_source(cell.source)
            code = code if full else _definitions(code)
        except (SyntaxError, ValueError) as e:
            errors.append(f"cell {i}: {type(e).__name__}: {e}")
            continue
        if code.strip():
            cells.append((str(i), code))
    return cells, errors


def compare(source, exercises, sub) -> list[str]:
    """Flags for check cells and exercise cells that differ from the source's."""
    flags = []
    sub_code = [c for c in sub.cells if c.cell_type == "code"]
    for ex in exercises:
        gid = ex.grade_id + "-check"
        hits = [c for c in sub_code if ex.id in check_ids(c.source)
                or c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid]
        want = _norm(source.cells[ex.check_cell].source)
        if not hits:
            flags.append(f"check-deleted: {ex.id}")
        elif len(hits) > 1:
            flags.append(f"check-duplicated: {ex.id} ({len(hits)} cells)")
        elif _norm(hits[0].source) != want:
            flags.append(f"check-edited: {ex.id}")
        for i in ex.solution_cells:
            names = defined_names(source.cells[i].source)
            defining = [c for c in sub_code if set(names) & set(defined_names(c.source))]
            if names and not defining:
                flags.append(f"exercise-deleted: {ex.id} ({', '.join(names)})")
            elif len(defining) > 1:
                flags.append(f"exercise-duplicated: {ex.id}")
            elif defining and _scaffold(defining[0].source) != _scaffold(source.cells[i].source):
                flags.append(f"exercise-edited: {ex.id}")
    known = {ex.id for ex in exercises}
    for c in sub_code:
        for x in check_ids(c.source):
            if x not in known:
                flags.append(f"unknown-check: {x}")
    return flags


# ----------------------------------------------------------------------------------------------------------------
# The proxy: a student's function as the instructor's check cell sees it


class StudentError(Exception):
    """An exception raised by the student's code in the sandbox (its type's name is kept)."""


_EXC: dict[str, type] = {}


def _student_exception(name: str, msg: str) -> BaseException:
    if name == "NotImplementedError":
        return NotImplementedError(msg)
    safe = re.sub(r"[^A-Za-z0-9_]", "", name)[:60] or "Error"
    cls = _EXC.setdefault(safe, type(safe, (StudentError,), {}))
    return cls(msg)


class Proxy:
    def __init__(self, session, name: str):
        self.session, self.__name__ = session, name

    def __call__(self, *args, **kwargs):
        return self.session.call(self.__name__, args, kwargs)

    def run_checked(self, args, forbid):
        """(result, seen) of labs/checks.py's run_student, run in the sandbox: the student's function on its own
        copies, watched for `forbid`, as the in-notebook check runs it."""
        return self.session.call(self.__name__, args, {}, watch=list(forbid))

    def __repr__(self):
        return f"<the submission's {self.__name__}>"


class Session:
    """One submission in one trusted worker: its sandbox, its budget, what it did."""

    def __init__(self, path: Path, sandbox, opts):
        self.path, self.sandbox, self.opts = path, sandbox, opts
        self.library: set = set()
        self.deadline = 0.0
        self.missing_name = False
        self.restarts = 0
        self.cells = None
        self.full = opts["full"]

    def call(self, name, args, kwargs, watch=None):
        from .sandbox import SandboxDied
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the check ran past {self.opts['timeout_cell']:g} s")
        if self.sandbox.busy > self.opts["timeout_notebook"]:
            raise TimeoutError(f"the submission used its {self.opts['timeout_notebook']:g} s")
        try:
            msg = {"op": "call", "name": name, "args": list(args), "kwargs": dict(kwargs)}
            if watch is not None:
                msg["watch"] = list(watch)
            reply = self.sandbox.request(msg, min(left, self.opts["timeout_notebook"] - self.sandbox.busy + 1))
        except SandboxDied as e:
            raise RuntimeError(str(e)) from None
        if "exc" in reply:
            if reply["exc"] == "MemoryError":
                self.sandbox.flag(f"memory-limit: {name} ran out of memory")
            if reply["exc"] == "NameError":  # the function, or a global it reads (a tokenizer built by a
                self.missing_name = True       # cell that computes), was skipped: the runner retries in full
            raise _student_exception(str(reply["exc"]), str(reply.get("msg", "")))
        if isinstance(reply.get("library"), list):
            self.library.update(map(str, reply["library"]))
        if watch is not None:
            return reply.get("value"), reply.get("watched") or {}
        return reply.get("value")
