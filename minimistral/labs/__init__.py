"""Course labs: the student edition, automatic grading, and nbgrader metadata.

    python -m minimistral.labs student --out DIR [NOTEBOOK ...]   # solutions stubbed out, exercise outputs cleared
    python -m minimistral.labs grade SUBMISSION ... [--csv grades.csv] [--jobs N]
    python -m minimistral.labs tag NOTEBOOK ... [--check]          # nbgrader cell metadata, in the .ipynb and its .py twin

An exercise is a function whose solution sits between `### BEGIN SOLUTION` and `### END SOLUTION` lines in its
body (nbgrader's markers); a later cell calls `minimistral.labs.checks.check_function("NN.k name", ...)` or
`check_value(...)`, which prints one verdict line `[PASS|FAIL|TODO] NN.k name: ...`. The grader runs every
submission in its own kernel, in its own temporary folder, under a per-cell timeout, a whole-notebook time limit,
an output size limit and resource limits, and reads the verdict lines of the check cells.

Grading runs students' code with your rights. Run it in a container or under a throwaway account.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# nbgrader's own replacement text, so the two routes give students the same stub (we keep the markers around it).
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
# The first argument of a check call is the exercise id "NN.k name" (a newline may follow the parenthesis).
CHECK_CALL = re.compile(r"\bcheck_(?:function|value)\(\s*([\"'])(\d\d\.\d+ [^\"'\n]+)\1")
VERDICT = re.compile(r"^\[(PASS|FAIL|TODO)\] (\d\d\.\d+ [^:\n]+): ?(.*)$", re.M)


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


def _notebooks_or_default(paths: list[Path]) -> list[Path]:
    paths = paths or default_notebooks()
    if not paths:
        raise LabsError(f"no NN_*.ipynb notebooks in {NOTEBOOKS_DIR} (is this a clone of the repository?); "
                        "name the notebooks on the command line")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise LabsError(f"{missing[0]}: no such notebook")
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Student edition


def stub_source(source: str, where: str = "") -> str:
    """Replace the inside of each solution region by nbgrader's stub, at the region's indentation. The markers
    stay, so the notebooks' prose still makes sense and a student's submission can be stubbed again."""
    lines = source.split("\n")
    for begin, end, indent in reversed(solution_regions(source, where)):
        if not indent:  # a top-level stub would raise and stop the student's notebook
            raise LabsError(f"{where} line {begin + 1}: the solution markers are not indented; they must sit "
                            "inside a function body so that the stubbed notebook still runs")
        lines[begin + 1:end] = [indent + s for s in STUB]  # the markers stay: the prose refers to them
    return "\n".join(lines)


def _check_syntax(source: str, where: str):
    from IPython.core.inputtransformer2 import TransformerManager  # handles %magics and !shell lines
    try:
        compile(TransformerManager().transform_cell(source), where, "exec")
    except SyntaxError as e:
        raise LabsError(f"{where}: the stubbed cell is not valid Python ({e.msg}, line {e.lineno}); "
                        "solution markers must sit inside a function body") from None


def student_notebook(nb, where: str = ""):
    """A copy of `nb` with solutions stubbed and the exercise cells' outputs cleared."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # deep copy
    for ex in find_exercises(nb, where):  # every solution cell belongs to an exercise (or this raises)
        for i in ex.solution_cells:
            cell = nb.cells[i]
            cell.source = stub_source(cell.source, f"{where} cell {i}")
            _check_syntax(cell.source, f"{where} cell {i}")
        for i in ex.solution_cells + [ex.check_cell]:
            nb.cells[i].outputs = []
            nb.cells[i].execution_count = None
    return nb


LOCAL_REF = re.compile(r"!\[[^\]]*\]\(([^)\s]+)|<img[^>]*\bsrc=[\"']([^\"']+)")


def local_files(nb, folder: Path) -> list[Path]:
    """Files a notebook's markdown shows by a relative path (images), which must travel with it."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for m in LOCAL_REF.finditer(cell.source):
            ref = m.group(1) or m.group(2)
            if "://" in ref or ref.startswith(("/", "data:", "attachment:")):
                continue
            path = (folder / ref).resolve()
            if path.is_file() and folder.resolve() in path.parents:
                found.append(path)
    return found


def write_student_edition(notebooks: list[Path], out: Path, force: bool = False) -> list[Path]:
    if out.exists() and any(out.iterdir()) and not force:
        raise LabsError(f"{out} is not empty; choose an empty folder or pass --force to overwrite files in it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        student = student_notebook(nb, str(path))
        target = out / path.name
        nbformat.write(student, target)
        written.append(target)
        for extra in local_files(nb, path.parent):
            dest = out / extra.relative_to(path.parent.resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, dest)
            written.append(dest)
    return written


# ----------------------------------------------------------------------------------------------------------------
# nbgrader metadata


def nbgrader_metadata(ex: Exercise, solution: bool) -> dict:
    if solution:
        return {"grade": False, "grade_id": f"{ex.grade_id}-solution", "locked": False, "schema_version": 3,
                "solution": True, "task": False}
    return {"grade": True, "grade_id": f"{ex.grade_id}-check", "locked": True, "points": 1, "schema_version": 3,
            "solution": False, "task": False}


def wanted_metadata(nb, where: str = "") -> dict[int, dict]:
    """cell index -> the nbgrader metadata it should carry."""
    wanted = {}
    for ex in find_exercises(nb, where):
        for i in ex.solution_cells:
            wanted[i] = nbgrader_metadata(ex, solution=True)
        wanted[ex.check_cell] = nbgrader_metadata(ex, solution=False)
    return wanted


PY_HEADER = re.compile(r"^# %%( nbgrader=\{.*\})?$")


def _tag_py_twin(py: Path, nb, wanted: dict[int, dict], write: bool) -> bool:
    """Put the metadata into the jupytext percent twin's cell headers (`# %% nbgrader={...}`), so that
    regenerating the .ipynb from the .py keeps it. Returns whether the file changed (or would change)."""
    import jupytext
    text = py.read_text()
    twin = jupytext.reads(text, fmt="py:percent")
    if [c.source for c in twin.cells] != [c.source for c in nb.cells]:
        raise LabsError(f"{py}: its cells differ from {py.with_suffix('.ipynb').name}; regenerate the notebook "
                        "from the .py first (jupytext --to notebook --execute)")
    lines = text.split("\n")
    headers = [n for n, line in enumerate(lines) if line.startswith("# %%")]
    if len(headers) != len(twin.cells):
        raise LabsError(f"{py}: {len(headers)} '# %%' lines for {len(twin.cells)} cells; every cell needs its own "
                        "'# %%' line for tagging")
    for i, meta in wanted.items():
        n = headers[i]
        if not PY_HEADER.match(lines[n]):
            raise LabsError(f"{py} line {n + 1}: cell header {lines[n]!r} already carries other metadata; "
                            "expected '# %%' or '# %% nbgrader={...}'")
        lines[n] = "# %% nbgrader=" + json.dumps(meta)
    new = "\n".join(lines)
    if new == text:
        return False
    check = jupytext.reads(new, fmt="py:percent")
    if [c.source for c in check.cells] != [c.source for c in nb.cells] or any(
            check.cells[i].metadata.get("nbgrader") != meta for i, meta in wanted.items()):
        raise LabsError(f"{py}: tagging would change cell sources under jupytext; tag it by hand")
    if write:
        py.write_text(new)
    return True


def tag(paths: list[Path], write: bool = True, twins: bool = True, errors: list | None = None) -> list[Path]:
    """Add nbgrader metadata to every exercise cell (idempotent). Returns the files changed (or that would be).
    With an `errors` list, a notebook that cannot be tagged is reported there and the others are still tagged."""
    changed = []
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
            wanted = wanted_metadata(nb, str(path))
            dirty = False
            for i, cell in enumerate(nb.cells):
                have = cell.metadata.get("nbgrader")
                if i in wanted and have != wanted[i]:
                    cell.metadata["nbgrader"] = wanted[i]
                    dirty = True
                elif i not in wanted and have is not None:  # an exercise that moved or went away
                    del cell.metadata["nbgrader"]
                    dirty = True
            py = path.with_suffix(".py")
            py_dirty = twins and py.exists() and _tag_py_twin(py, nb, wanted, write=False)  # validates first
            if dirty:
                changed.append(path)
                if write:
                    nbformat.write(nb, path)
            if py_dirty:
                changed.append(py)
                if write:
                    _tag_py_twin(py, nb, wanted, write=True)
        except LabsError as e:
            if errors is None:
                raise
            errors.append(str(e))
    return changed


# ----------------------------------------------------------------------------------------------------------------
# Grading: the runner (one per submission, in its own process group and temporary folder)

MAX_FILE_BYTES = 4 << 30  # RLIMIT_FSIZE for the kernel: a runaway writer cannot fill the disk


def _set_limits(cpu_seconds: int, memory_mb: int):
    try:
        import resource
    except ImportError:  # not on Windows
        return
    limits = [(resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_FSIZE, MAX_FILE_BYTES)]
    if memory_mb > 0:  # RLIMIT_DATA counts heap and private writable mappings (Linux >= 4.7), not PROT_NONE reservations
        limits.append((resource.RLIMIT_DATA, memory_mb << 20))
    for what, value in limits:
        try:
            soft, hard = resource.getrlimit(what)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(what, (value, hard))
        except (ValueError, OSError):
            pass


def _kill_group(pid, sig=signal.SIGKILL):
    if not pid:
        return
    try:
        os.killpg(int(pid), sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def run_one(notebook: Path, workdir: Path, timeout_cell: float, timeout_notebook: float, max_output: int,
            kernel_name: str = "python3") -> dict:
    """Execute one notebook in `workdir`; write workdir/result.json after every cell (so a hard kill keeps what
    was graded so far) and return the final result."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    start = time.monotonic()
    deadline = start + timeout_notebook
    result = {"status": "running", "detail": "", "exercises": [], "verdicts": {}, "check_errors": {},
              "errors": [], "cells": 0, "seconds": 0.0}
    result_path = workdir / "result.json"

    def save():
        result["seconds"] = round(time.monotonic() - start, 2)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, result_path)

    try:
        nb = nbformat.read(notebook, as_version=4)
        exercise_cells = {i: check_ids(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    except Exception as e:
        result.update(status="unreadable", detail=f"{type(e).__name__}: {e}")
        save()
        return result
    exercise_cells = {i: ids for i, ids in exercise_cells.items() if ids}
    result["exercises"] = [x for ids in exercise_cells.values() for x in ids]
    kdir = workdir / "notebook"  # the kernel's working folder: a copy of the notebook and nothing of ours
    kdir.mkdir(exist_ok=True)
    local = kdir / notebook.name
    nbformat.write(nb, local)
    save()

    stop = {"why": None}
    kernel_pid = [None]

    def kill_kernel(why):
        if stop["why"] is None:
            stop["why"] = why
        _kill_group(kernel_pid[0])

    class Client(NotebookClient):
        output_bytes = 0

        def process_message(self, msg, cell, cell_index):
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error", "update_display_data"):
                self.output_bytes += len(json.dumps(msg["content"]))
                if self.output_bytes > max_output:
                    if stop["why"] is None:
                        cell.outputs.append(nbformat.v4.new_output(
                            "stream", name="stderr", text=f"\n[grader] output limit of {max_output} bytes reached"))
                    kill_kernel(f"output limit: the notebook printed more than {max_output:,} bytes "
                                f"(cell {cell_index})")
                    return None
            return super().process_message(msg, cell, cell_index)

    client = Client(nb, timeout=int(timeout_cell), kernel_name=kernel_name, allow_errors=True,
                    interrupt_on_timeout=True, record_timing=False, startup_timeout=120,
                    resources={"metadata": {"path": str(kdir)}})
    watchdog = threading.Timer(max(1.0, deadline - time.monotonic()),
                               lambda: kill_kernel(f"time limit: the notebook ran past {timeout_notebook:g} s"))
    watchdog.daemon = True
    watchdog.start()
    try:
        with client.setup_kernel(cwd=str(kdir)):
            kernel_pid[0] = getattr(client.km.provisioner, "pid", None)
            (workdir / "kernel.pid").write_text(str(kernel_pid[0] or ""))
            for i, cell in enumerate(nb.cells):
                if stop["why"]:
                    break
                left = deadline - time.monotonic()
                client.timeout = max(1, int(min(timeout_cell, left)))
                try:
                    client.execute_cell(cell, i)
                except DeadKernelError:
                    if not stop["why"]:
                        stop["why"] = f"the kernel died in cell {i} (os._exit, a crash, or the memory/CPU limit)"
                    break
                result["cells"] = i + 1
                for out in cell.get("outputs", []):
                    if out.get("output_type") == "error":
                        result["errors"].append({"cell": i, "ename": out.get("ename", ""),
                                                 "evalue": str(out.get("evalue", ""))[:300]})
                        if i in exercise_cells:
                            for x in exercise_cells[i]:
                                result["check_errors"][x] = f"{out.get('ename')}: {str(out.get('evalue'))[:200]}"
                if i in exercise_cells:
                    text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                                   if o.get("output_type") == "stream" and o.get("name") == "stdout")
                    for tag_, x, message in VERDICT.findall(text):
                        if x in exercise_cells[i]:  # only the ids this check cell checks; the last line wins
                            result["verdicts"][x] = [tag_, message]
                save()
    except Exception as e:  # the kernel did not start, or nbclient gave up
        if not stop["why"]:
            stop["why"] = f"{type(e).__name__}: {e}"[:500]
            result["status"] = "kernel-failed" if result["cells"] == 0 and kernel_pid[0] is None else "died"
    finally:
        watchdog.cancel()
        _kill_group(kernel_pid[0])
    why = stop["why"] or ""
    if result["status"] == "running":
        if why.startswith("time limit"):
            result["status"] = "timeout"
        elif why.startswith("output limit"):
            result["status"] = "output-limit"
        elif why:
            result["status"] = "died"
        elif result["errors"]:
            result["status"] = "error"
            e = result["errors"][0]
            why = f"cell {e['cell']} raised {e['ename']}: {e['evalue'][:120]}"
        else:
            result["status"] = "ok"
    result["detail"] = why
    try:
        nbformat.write(nb, local)  # the executed copy, for a human to look at with --keep
    except Exception:
        pass
    save()
    return result


# ----------------------------------------------------------------------------------------------------------------
# Grading: the driver


@dataclass
class Graded:
    file: str
    status: str
    detail: str
    rows: list  # (exercise, result, hint)
    seconds: float

    @property
    def passed(self) -> int:
        return sum(r[1] == "pass" for r in self.rows)


def _result_rows(result: dict) -> list:
    rows = []
    for x in result.get("exercises", []):
        if x in result["verdicts"]:
            tag_, message = result["verdicts"][x]
            rows.append((x, tag_.lower(), message))
        elif x in result.get("check_errors", {}):
            rows.append((x, "error", "the check cell raised " + result["check_errors"][x]))
        else:
            rows.append((x, "not run", "the check cell did not run (see the notebook status)"))
    return rows


def _run_submission(path: Path, args) -> tuple[dict, float]:
    """Start the runner for one submission in a fresh temporary folder; return its result and the wall time."""
    workdir = Path(tempfile.mkdtemp(prefix="minimistral-grade-"))
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.pop("MINIMISTRAL_CHECKS_RAISE", None)  # that is for nbgrader; this grader reads the verdict lines
    # Run this file as a script, not `-m minimistral.labs`: the package's __init__ would import torch for nothing.
    me = str(Path(__file__).resolve())
    cmd = [sys.executable, "-c", f"import runpy, sys; sys.argv[0] = {me!r}; runpy.run_path({me!r}, run_name='__main__')",
           "_run_one", str(path.resolve()), "--workdir", str(workdir),
           "--timeout-cell", str(args.timeout_cell), "--timeout-notebook", str(args.timeout_notebook),
           "--max-output", str(args.max_output), "--max-memory", str(args.max_memory), "--kernel", args.kernel]
    t0 = time.monotonic()
    killed = False
    with open(workdir / "runner.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            proc.wait(timeout=args.timeout_notebook + 150)  # the runner enforces the limit; this is the backstop
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc.pid)
            proc.wait()
    pid_file = workdir / "kernel.pid"
    if pid_file.exists():  # the kernel runs in a session of its own: make sure nothing it started lives on
        _kill_group(pid_file.read_text().strip() or None)
    seconds = round(time.monotonic() - t0, 1)
    try:
        result = json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        tail = (workdir / "runner.log").read_bytes()[-400:].decode(errors="replace").strip().replace("\n", " | ")
        result = {"status": "crashed", "detail": f"the grader's runner exited with {proc.returncode}: {tail}",
                  "exercises": []}
    if killed or result["status"] == "running":
        result["status"] = "timeout" if killed else "crashed"
        result["detail"] = result.get("detail") or f"the runner was stopped (exit code {proc.returncode})"
    if args.keep:
        print(f"kept {workdir} for {path}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result, seconds


def grade_one(path: Path, args) -> Graded:
    result, seconds = _run_submission(path, args)
    if result["status"] == "kernel-failed":  # kernels sometimes fail to start on a loaded machine: one more try
        result, more = _run_submission(path, args)
        seconds += more
    return Graded(str(path), result["status"], result.get("detail", ""), _result_rows(result), seconds)


def find_submissions(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.exists():
            found.append(p)
        else:
            raise LabsError(f"{p}: no such file or folder")
    return found


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def print_table(graded: list[Graded], out=None):
    out = out or sys.stdout
    rows = [("student file", "exercise", "result", "hint")]
    for g in graded:
        for x, res, hint in g.rows:
            rows.append((g.file, x, res, "" if res == "pass" else _short(hint, 70)))
        if g.status != "ok":
            rows.append((g.file, "(notebook)", g.status, _short(g.detail, 70)))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for n, r in enumerate(rows):
        print("  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3], file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 4, file=out)
    print(file=out)
    for g in graded:
        print(f"{g.file}: {g.passed}/{len(g.rows)} passed, notebook {g.status}, {g.seconds:.1f} s", file=out)


def write_csv(graded: list[Graded], path: Path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "exercise", "result", "hint", "notebook_status", "notebook_detail", "seconds"])
        for g in graded:
            for x, res, hint in g.rows:
                w.writerow([g.file, x, res, hint, g.status, g.detail, g.seconds])
            if not g.rows:
                w.writerow([g.file, "", "", "", g.status, g.detail, g.seconds])


def grade(paths: list[str], args) -> list[Graded]:
    submissions = find_submissions(paths)
    if not submissions:
        raise LabsError(f"no .ipynb files in {' '.join(paths)}")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return list(pool.map(lambda p: grade_one(p, args), submissions))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimistral.labs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("student", help="write the student edition (solutions replaced by stubs)")
    s.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    s.add_argument("--out", required=True, type=Path, help="an empty (or new) folder")
    s.add_argument("--force", action="store_true", help="write into a non-empty folder")

    g = sub.add_parser("grade", help="execute submissions and report the checks' verdicts; RUNS STUDENTS' CODE")
    g.add_argument("paths", nargs="+", help="submitted notebooks, or folders searched for *.ipynb")
    g.add_argument("--timeout-cell", type=float, default=120, help="seconds per cell (then interrupt; default 120)")
    g.add_argument("--timeout-notebook", type=float, default=600, help="seconds per notebook (then kill; default 600)")
    g.add_argument("--max-output", type=int, default=10_000_000, help="bytes of output per notebook (default 10 MB)")
    g.add_argument("--max-memory", type=int, default=8192,
                   help="MiB of heap per kernel (RLIMIT_DATA; default 8192; 0 = no limit, e.g. for the real 7B)")
    g.add_argument("--jobs", type=int, default=1, help="submissions run at once (default 1)")
    g.add_argument("--csv", type=Path, help="also write the table as CSV")
    g.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    g.add_argument("--keep", action="store_true", help="keep each temporary folder (executed copy and logs)")

    t = sub.add_parser("tag", help="add nbgrader cell metadata to notebooks and their jupytext .py twins")
    t.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    t.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file needs tagging")
    t.add_argument("--no-py", action="store_true", help="leave the .py twins alone")

    r = sub.add_parser("_run_one")  # internal: the per-submission runner that grade starts
    r.add_argument("notebook", type=Path)
    r.add_argument("--workdir", type=Path, required=True)
    r.add_argument("--timeout-cell", type=float, required=True)
    r.add_argument("--timeout-notebook", type=float, required=True)
    r.add_argument("--max-output", type=int, required=True)
    r.add_argument("--max-memory", type=int, default=0)
    r.add_argument("--kernel", default="python3")

    a = p.parse_args(argv)
    try:
        if a.command == "student":
            notebooks = _notebooks_or_default(a.notebooks)
            written = write_student_edition(notebooks, a.out, a.force)
            n = sum(len(find_exercises(nbformat.read(q, 4), str(q))) for q in notebooks)
            print(f"wrote {len(written)} files to {a.out} ({len(notebooks)} notebooks, {n} exercises)")
            return 0
        if a.command == "tag":
            notebooks = _notebooks_or_default(a.notebooks)
            errors = []
            changed = tag(notebooks, write=not a.check, twins=not a.no_py, errors=errors)
            for q in changed:
                print(f"{'needs tagging' if a.check else 'tagged'}: {q}")
            for e in errors:
                print(f"error: {e}", file=sys.stderr)
            if not changed and not errors:
                print(f"all {len(notebooks)} notebooks carry their nbgrader metadata")
            return 2 if errors else 1 if a.check and changed else 0
        if a.command == "grade":
            graded = grade(a.paths, a)
            print_table(graded)
            if a.csv:
                write_csv(graded, a.csv)
            bad = [q for q in graded if q.status != "ok"]
            if bad:
                print(f"{len(bad)} of {len(graded)} notebooks did not run cleanly: "
                      + ", ".join(f"{q.file} ({q.status})" for q in bad), file=sys.stderr)
            return 1 if bad else 0
        if a.command == "_run_one":
            _set_limits(int(a.timeout_notebook * (os.cpu_count() or 1)) + 120, a.max_memory)
            run_one(a.notebook, a.workdir, a.timeout_cell, a.timeout_notebook, a.max_output, a.kernel)
            return 0
    except LabsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
