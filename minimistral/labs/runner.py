"""The trusted worker: runs one source notebook and grades every submission of it against it.

One worker process per `--jobs`; each keeps one sandbox zygote for its life, and a fixed range of accounts
(slots). Nothing from a submission is ever executed here: only the source's cells, with proxies.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import time
from pathlib import Path

import nbformat

from . import sandbox as sb
from .exercises import LabsError, defined_names, find_exercises, python_source
from .grade import CELL_PREFIX, SOLUTION_PREFIX, Graded, Proxy, Row, Session, compare, submission_cells

_state: dict = {}  # per worker process: the zygote, its slot range, the isolation found


def init_worker(slot_queue, opts):
    _state["slots"] = slot_queue.get()
    _state["opts"] = opts
    os.environ.setdefault("MPLBACKEND", "Agg")


def _zygote():
    if "zygote" not in _state:
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pkg_parent, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": _state["opts"]["threads"], "MKL_NUM_THREADS": _state["opts"]["threads"]}
        _state["zygote"] = sb.Zygote(env)
        import atexit
        atexit.register(_state["zygote"].close)
    return _state["zygote"]


def _rng_state():
    import torch
    state = [torch.get_rng_state(), random.getstate()]
    try:
        import numpy as np
        state.append(np.random.get_state())
    except ImportError:
        pass
    return state


def _set_rng_state(state):
    import torch
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    if len(state) > 2:
        import numpy as np
        np.random.set_state(state[2])


def _verdicts(code, ns, ids, sink_fn, tracer=None) -> tuple[dict, str]:
    """Run a check cell; returns {id: (tag, message)} and the error it raised, if any."""
    from .checks import collect_verdicts
    out = io.StringIO()
    err = ""
    with collect_verdicts() as sink, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        import sys
        if tracer:
            sys.setprofile(tracer)
        try:
            exec(code, ns)
        except BaseException as e:  # noqa: BLE001 -- includes SystemExit from a broken source cell
            err = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            if tracer:
                sys.setprofile(None)
    got = {}
    for tag, x, message in sink:
        if x in ids:
            got[x] = (tag.lower(), message)
    return got, err


def grade_group(source_path: str, sub_paths: list[str]) -> list[Graded]:
    """Grade the submissions of one source notebook (at most as many as this worker has slots)."""
    from .worker import Tracer
    opts = _state["opts"]
    t_start = time.monotonic()
    source = nbformat.read(source_path, as_version=4)
    exercises = find_exercises(source, source_path)
    by_check = {ex.check_cell: ex for ex in exercises}
    solution_cells = {i for ex in exercises for i in ex.solution_cells}
    iso = opts["isolation"]
    zyg = _zygote()
    accounts = opts["accounts"]
    sessions, graded = [], {}
    for k, path in enumerate(sub_paths):
        slot = _state["slots"][k]
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as e:
            graded[path] = Graded(path, "unreadable", f"{type(e).__name__}: {str(e)[:200]}",
                                  [Row(ex.id, "not run", "the file is not a readable notebook") for ex in exercises],
                                  0.0)
            continue
        box = sb.Sandbox(zyg, slot, accounts[slot] if accounts else None, iso, opts["limits"], opts["hide"],
                         opts.get("keep", []))
        s = Session(Path(path), box, opts)
        s.nb, s.flags, s.rows, s.t0 = nb, compare(source, exercises, nb), {}, time.monotonic()
        s.errors = _start(s)
        sessions.append(s)

    ns = {"__name__": "__main__"}
    try:
        from IPython.core.interactiveshell import InteractiveShell
        ns["get_ipython"] = InteractiveShell.instance  # %magics in the source's cells
    except Exception:
        pass
    source_errors = []
    for i, cell in enumerate(source.cells):
        if cell.cell_type != "code":
            continue
        try:
            code = compile(python_source(cell.source),
                           f"{SOLUTION_PREFIX if i in solution_cells else CELL_PREFIX}{i}>", "exec")
        except SyntaxError as e:
            source_errors.append(f"cell {i}: {e}")
            continue
        if i not in by_check:
            _, err = _verdicts(code, ns, set(), None)
            if err:
                source_errors.append(f"cell {i}: {err}")
            continue
        ex = by_check[i]
        ids = set(check_ids_of(cell.source))
        names = [n for j in sorted(solution_cells) if j < i for n in defined_names(source.cells[j].source)]
        rng = _rng_state()
        tracer = Tracer(SOLUTION_PREFIX, CELL_PREFIX)
        ref, err = _verdicts(code, ns, ids, None, tracer)  # the instructor's own solution: must pass
        forbidden = tracer.seen[CELL_PREFIX] - tracer.seen[SOLUTION_PREFIX]
        broken = err or any(v[0] != "pass" for v in ref.values()) or not ref
        mine = {n: ns.get(n) for n in names}
        for s in sessions:
            if broken:
                for x in ids:
                    s.rows[x] = Row(x, "error", f"the source's own check does not pass ({err or ref}); "
                                    "fix the source notebook", ["grader"])
                continue
            for x, row in _check_one(s, code, ns, ids, names, rng, forbidden).items():
                s.rows[x] = row
            ns.update(mine)
        _set_rng_state(rng)
        _verdicts(code, ns, ids, None)  # leave the source's state as its own run would (e.g. variables it sets)
    out = []
    for s in sessions:
        s.sandbox.kill()
        rows = [s.rows.get(ex.id) or Row(ex.id, "not run", "the check did not run") for ex in exercises]
        errors = s.errors if s.full else [e for e in s.errors if "NameError" not in e]  # skipped cells' names
        flags = s.flags + s.sandbox.flags + (["definitions: " + "; ".join(errors)[:300]] if errors else [])
        if s.restarts:
            flags.append(f"restarted: the sandbox was restarted {s.restarts} time(s)")
        status = "ok"
        if any(f.startswith(("died", "memory-limit", "timeout", "output-limit", "protocol")) for f in flags):
            status = next(f.split(":")[0] for f in flags
                          if f.startswith(("died", "memory-limit", "timeout", "output-limit", "protocol")))
        elif any(f.startswith(("check-", "suspicious", "unknown-check", "exercise-deleted", "exercise-dup"))
                 for f in flags) or any(r.result == "library" for r in rows):
            status = "flagged"
        detail = "; ".join(flags)
        if source_errors:
            detail = (detail + "; " if detail else "") + f"source cells that raised: {source_errors[:3]}"
        graded[str(s.path)] = Graded(str(s.path), status, detail, rows, round(time.monotonic() - s.t0, 1),
                                     flags)
    del t_start
    return [graded[p] for p in sub_paths if p in graded]


def check_ids_of(source: str) -> list[str]:
    from .exercises import check_ids
    return check_ids(source)


def _start(s: Session) -> list[str]:
    cells, errors = submission_cells(s.nb, s.full)
    try:
        errors += s.sandbox.start(cells, s.opts["timeout_notebook"])
    except sb.SandboxDied as e:
        errors.append(str(e))
    except Exception as e:
        errors.append(f"the sandbox did not start: {type(e).__name__}: {e}")
    return errors


def _check_one(s: Session, code, ns, ids, names, rng, forbidden) -> dict:
    """Run the source's check cell against one submission (retrying once in full mode or after a death)."""
    for attempt in range(3):
        if s.sandbox.pid is None:
            if s.restarts >= 3:
                return {x: Row(x, "not run", "the sandbox died too often; see the flags") for x in ids}
            s.restarts += 1
            s.errors += _start(s)
        _set_rng_state(rng)
        for n in names:
            ns[n] = Proxy(s, n)
        s.library = set()
        s.missing_name = False
        s.deadline = time.monotonic() + s.opts["timeout_cell"]
        t0 = time.monotonic()
        got, err = _verdicts(code, ns, ids, None)
        seconds = round(time.monotonic() - t0, 2)
        if s.missing_name and not s.full and attempt == 0:  # a definition needs a cell that computes something
            s.full = True  # run the whole notebook instead: planned, so not counted (or flagged) as a restart
            s.sandbox.kill()
            s.errors += _start(s)
            continue
        rows = {}
        for x in ids:
            if x in got:
                result, hint = got[x]
                if result == "pass" and s.library & forbidden:
                    result = "library"
                    hint = ("calls the library's own " + ", ".join(sorted(s.library & forbidden))
                            + " (not allowed: the exercise is to write it)")
                rows[x] = Row(x, result, hint, [], seconds)
            else:
                rows[x] = Row(x, "error", f"the check raised {err}" if err else "no verdict", [], seconds)
        return rows
    return {x: Row(x, "error", "the sandbox could not answer") for x in ids}


def grade_chunk(source_path: str, sub_paths: list[str]) -> list[Graded]:
    try:
        return grade_group(source_path, sub_paths)
    except LabsError as e:
        return [Graded(p, "no-source", str(e), [], 0.0) for p in sub_paths]
