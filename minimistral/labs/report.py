"""The grading driver (submissions matched to sources, worker processes) and its output: table and CSV."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .exercises import LabsError, NOTEBOOKS_DIR
from .grade import Graded

CONTAINER_HINT = ("Grade inside a container instead (see notebooks/INSTRUCTORS.md, 'Grading in a container'): "
                  "run as root there, with --cap-add SYS_ADMIN so that mount namespaces work.")


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


def source_notebooks(folder: Path | None) -> dict[str, Path]:
    folder = Path(folder) if folder else NOTEBOOKS_DIR
    found = {p.name: p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}
    if not found:
        raise LabsError(f"no NN_*.ipynb notebooks in {folder}; name the instructor's notebooks with --source DIR")
    return found


def match_source(sub: Path, sources: dict[str, Path]) -> Path | None:
    """The source with the submission's file name, else the one with its NN_ number."""
    if sub.name in sources:
        return sources[sub.name]
    m = re.match(r"(\d\d)_", sub.name)
    hits = [p for name, p in sources.items() if m and name.startswith(m.group(1) + "_")]
    return hits[0] if len(hits) == 1 else None


def grade(paths: list[str], opts: dict, self_check: bool = False):
    """Grade the submissions in `paths`: a list of Graded. With self_check, each source notebook that has
    submissions is also graded as a submission of itself, in the same workers and sandboxes, and
    (graded, proof) is returned, proof holding those self-gradings (see self_check_failures)."""
    from . import runner
    submissions = find_submissions(paths)
    if not submissions:
        raise LabsError(f"no .ipynb files in {' '.join(paths)}")
    sources = source_notebooks(opts.get("source"))
    groups: dict[Path, list[str]] = {}
    out: dict[str, Graded] = {}
    for sub in submissions:
        src = match_source(sub, sources)
        if src is None:
            out[str(sub)] = Graded(str(sub), "no-source", f"no source notebook named {sub.name} (or {sub.name[:3]}*) "
                                   f"in {opts.get('source') or NOTEBOOKS_DIR}", [], 0.0)
        else:
            groups.setdefault(src, []).append(str(sub))
    proof_paths = []
    if self_check:
        for src, subs in groups.items():
            if str(src) not in subs:
                subs.insert(0, str(src))
            proof_paths.append(str(src))
    per = opts["max_alive"]
    chunks = [(str(src), subs[k:k + per]) for src, subs in groups.items() for k in range(0, len(subs), per)]
    chunks.sort(key=lambda c: -os.path.getsize(c[0]))  # big notebooks first: better packing over the workers
    jobs = max(1, min(opts["jobs"], len(chunks) or 1))
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for w in range(jobs):
        slots.put(list(range(w * per, (w + 1) * per)))
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=runner.init_worker, initargs=(slots, opts)) as pool:
        for graded in pool.map(runner.grade_chunk, *zip(*chunks)) if chunks else []:
            for g in graded:
                out[g.file] = g
    graded = [out[str(s)] for s in submissions if str(s) in out]
    if self_check:
        return graded, [out.get(p) or Graded(p, "not run", "the self-check did not run", [], 0.0) for p in proof_paths]
    return graded


PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def unseen_paths(keep: list[str]) -> list[str]:
    """Folders on this Python's sys.path that a sandbox does not see (under a hidden top-level folder and not
    kept): a module imported from one works in the grader and fails in the sandbox."""
    from .sandbox import SYSTEM

    def under(p, folder):
        return p == folder or p.startswith(folder.rstrip("/") + "/")

    out = []
    for p in sys.path:
        if not p or not os.path.isdir(p):
            continue
        p = str(Path(p).resolve())
        if any(under(p, k) or under(k, p) for k in keep):  # kept, or the folder a kept one is in
            continue
        top = p.split("/")[1] if p.count("/") >= 1 else ""
        if top not in SYSTEM or any(under(p, d) for d in PRIVATE_DIRS):
            out.append(p)
    return out


def self_check_failures(proof: list, keep: list[str]) -> list[str]:
    """Why the instructor's own notebooks did not score full marks in the sandbox (empty when they did): the
    failing exercises with their reasons, the sandbox's flags, and the folders the sandbox cannot see."""
    lines = []
    for g in proof:
        bad = [r for r in g.rows if r.result != "pass"]
        if g.status in ("ok", "flagged") and g.rows and not bad:
            continue
        name = Path(g.file).name
        lines.append(f"{name}: {g.passed}/{len(g.rows)} exercises passed ({g.status})")
        lines += [f"{name} {r.exercise}: {r.result}: {_short(r.hint, 200)}" for r in bad[:5]]
        if g.detail:
            lines.append(f"{name}: {_short(g.detail, 300)}")
    if lines:
        unseen = unseen_paths(keep)
        if unseen:
            lines.append("the sandbox cannot see these folders on the grader's sys.path (modules there import in the "
                         f"grader, not in the sandbox): {', '.join(unseen[:5])}; install the packages into the "
                         "Python environment itself (its site-packages), or run the grader from a checkout outside "
                         "them")
        lines.append("fix the cause and grade again; this check guards against grading every student as failing "
                     "for a reason of the machine's")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Output


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def print_table(graded: list[Graded], out=None):
    out = out or sys.stdout
    rows = [("student file", "exercise", "result", "s", "hint / flags")]
    for g in graded:
        for r in g.rows:
            rows.append((g.file, r.exercise, r.result, f"{r.seconds:.1f}", "" if r.result == "pass" else _short(r.hint, 70)))
        if g.status != "ok" or not g.rows:
            rows.append((g.file, "(notebook)", g.status, "", _short(g.detail, 90)))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for n, r in enumerate(rows):
        print("  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4], file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 12, file=out)
    print(file=out)
    for g in graded:
        print(f"{g.file}: {g.passed}/{len(g.rows)} passed, {g.status}, {g.seconds:.1f} s"
              + (f" [{len(g.flags)} flag(s)]" if g.flags else ""), file=out)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "|", "%")


def csv_safe(value) -> str:
    """A spreadsheet reads a cell starting with = + - @ (or a tab/CR) as a formula: prefix a quote (OWASP)."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def refuse_csv(csv_path: Path, paths: list, submissions: list, source=None) -> None:
    """--csv never writes over an input: a submission, a folder or file named on the command line, a source
    notebook, or any notebook."""
    target = Path(csv_path).resolve()
    if target.is_dir():
        raise LabsError(f"--csv {csv_path} is a folder; name a .csv file")
    if target.suffix == ".ipynb":
        raise LabsError(f"--csv {csv_path} is a notebook's name; name a .csv file (nothing was graded)")
    inputs = [Path(p).resolve() for p in paths] + [Path(q).resolve() for q in submissions]
    inputs += [p.resolve() for p in source_notebooks(source).values()] if (Path(source) if source else
                                                                           NOTEBOOKS_DIR).is_dir() else []
    if target in inputs:
        raise LabsError(f"--csv {csv_path} is one of the grader's inputs; the table would replace it: name another "
                        "file (nothing was graded)")


def write_csv(graded: list[Graded], path: Path):
    tmp = Path(path).with_name(Path(path).name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "exercise", "result", "hint", "seconds", "notebook_status", "flags",
                    "notebook_seconds"])
        for g in graded:
            flags = " | ".join(g.flags)
            for r in g.rows or [None]:
                cells = [g.file, r.exercise if r else "", r.result if r else "", r.hint if r else g.detail,
                         r.seconds if r else "", g.status, flags, g.seconds]
                w.writerow([csv_safe(c) for c in cells])
    os.replace(tmp, path)


def summary_exit(graded: list[Graded]) -> int:
    bad = [g for g in graded if g.status != "ok"]
    if bad:
        print(f"{len(bad)} of {len(graded)} notebooks need a look: "
              + ", ".join(f"{g.file} ({g.status})" for g in bad), file=sys.stderr)
    return 1 if bad else 0


def timed(fn, *a):
    t0 = time.monotonic()
    return fn(*a), time.monotonic() - t0
