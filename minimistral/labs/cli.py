"""`python -m minimistral.labs student|grade|tag|site`: the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

from .exercises import LabsError, find_exercises, notebooks_or_default

GRADE_HELP = """Grade submissions against the instructor's notebooks. The exercise list, the check cells and the
references come from the source notebooks (--source, default the shipped notebooks/); each student's functions
run in a sandbox (own account, private namespace, limits) and only plain data comes back."""


# The sandbox accounts are a fixed set, mmgrade0 .. mmgrade{MAX_JOBS * MAX_ALIVE - 1} at most (sandbox.py).
MAX_JOBS, MAX_ALIVE = 8, 32


def _number(kind, lo, hi, zero: bool = False):
    """An argparse type: a finite `kind` in [lo, hi] (or 0 where zero means 'no limit'); argparse names the flag."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if zero and value == 0:
            return value
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {lo:g} to {hi:g}" + (" (or 0: no limit)"
                                                                                                if zero else ""))
        return value
    parse.__name__ = kind.__name__
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimistral.labs",
                                description="Course labs: the student edition, grading, nbgrader metadata.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("student", help="write the student edition (solutions replaced by stubs)")
    s.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    s.add_argument("--out", required=True, type=Path, help="an empty (or new) folder")
    s.add_argument("--bundle", action="store_true",
                   help="also put the library and its data in OUT, installable with `pip install -e OUT`")
    s.add_argument("--force", action="store_true", help="write into a non-empty folder")

    g = sub.add_parser("grade", help="grade submissions in sandboxes; RUNS STUDENTS' CODE", description=GRADE_HELP)
    g.add_argument("paths", nargs="+", help="submitted notebooks, or folders searched for *.ipynb")
    g.add_argument("--source", type=Path, help="folder of the instructor's NN_*.ipynb (default: the shipped ones)")
    g.add_argument("--timeout-cell", type=_number(float, 0.1, 86400), default=120,
                   help="seconds per check and submission (default 120)")
    g.add_argument("--timeout-notebook", type=_number(float, 1, 7 * 86400), default=600,
                   help="seconds of sandbox time per submission (default 600)")
    g.add_argument("--max-output", type=_number(int, 1000, 10**12), default=10_000_000,
                   help="bytes a sandbox may print (default 10 MB)")
    g.add_argument("--max-memory", type=_number(int, 64, 2**24, zero=True), default=4096,
                   help="MiB per sandbox, shared memory included (default 4096; 0 = no limit)")
    g.add_argument("--max-procs", type=_number(int, 4, 100_000), default=64,
                   help="processes and threads per sandbox (default 64)")
    g.add_argument("--jobs", type=_number(int, 1, MAX_JOBS), default=2, help="source notebooks graded at once (default 2)")
    g.add_argument("--max-alive", type=_number(int, 1, MAX_ALIVE), default=12,
                   help="sandboxes alive at once per job (default 12)")
    g.add_argument("--full", action="store_true",
                   help="run every non-check cell of a submission, not only its definitions (slower)")
    g.add_argument("--hide", type=Path, action="append", default=[],
                   help="another folder the sandboxes must not see (repeatable)")
    g.add_argument("--csv", type=Path, help="also write the table as CSV (formula-safe)")
    g.add_argument("--allow-weak-isolation", action="store_true",
                   help="grade even where the sandbox cannot be isolated (not root, no namespaces); UNSAFE")

    sub.add_parser("cleanup", help="remove the grader's sandbox accounts (mmgrade*), cgroups and lock file",
                   description="Remove what `labs grade` leaves on the machine: the accounts mmgrade0 .. mmgrade255 "
                   "(whichever exist), the cgroup folders minimistral-grade/ and the lock file. Needs root; "
                   "refused while a grader runs. The next `labs grade` creates what it needs again.")

    t = sub.add_parser("tag", help="nbgrader metadata and collapsed solutions, in notebooks and their .py twins")
    t.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    t.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file needs tagging")
    t.add_argument("--no-py", action="store_true", help="leave the .py twins alone")

    w = sub.add_parser("site", help="the course as a static website, from the notebooks' stored outputs")
    w.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    w.add_argument("--out", required=True, type=Path, help="a new or empty folder, or a site built before")
    w.add_argument("--solutions", action="store_true", help="instructor edition: solutions folded under a click")
    w.add_argument("--force", action="store_true", help="add the site's files to a non-empty folder")

    a = p.parse_args(argv)
    try:
        if a.command == "student":
            from .edition import read_notebook, write_bundle, write_student_edition
            notebooks = notebooks_or_default(a.notebooks)
            written = (write_bundle if a.bundle else write_student_edition)(notebooks, a.out, a.force)
            n = sum(len(find_exercises(read_notebook(q), str(q))) for q in notebooks)
            print(f"wrote {len(written)} files/folders to {a.out} ({len(notebooks)} notebooks, {n} exercises)")
            return 0
        if a.command == "tag":
            from .edition import tag
            notebooks = notebooks_or_default(a.notebooks)
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
            return _grade(a)
        if a.command == "cleanup":
            from .sandbox import cleanup
            removed = cleanup()
            for r in removed:
                print(f"removed {r}")
            print(f"removed {len(removed)} item(s)" if removed else "nothing to remove")
            return 0
        if a.command == "site":
            from .site import build_site, default_inputs
            notebooks, readme, instructors = default_inputs()
            built = build_site(a.out, notebooks_or_default(a.notebooks) if a.notebooks else notebooks, readme,
                               instructors, solutions=a.solutions, force=a.force)
            print(f"wrote {len(built.pages)} pages to {a.out} ({'instructor' if a.solutions else 'public'} edition, "
                  f"{built.bytes / 1e6:.1f} MB, {built.seconds:.1f} s); open {a.out / 'index.html'}")
            return 0
    except LabsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:  # a folder that cannot be made or written, a grader running: one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    return 2


def _grade(a) -> int:
    from . import report, sandbox
    from .exercises import NOTEBOOKS_DIR
    iso = sandbox.probe()
    if iso.problems:
        print("WARNING: this machine cannot isolate the submissions from each other and from the solutions:",
              file=sys.stderr)
        for problem in iso.problems:
            print(f"  - {problem}", file=sys.stderr)
        print(report.CONTAINER_HINT, file=sys.stderr)
        if not a.allow_weak_isolation:
            print("Nothing was graded. Pass --allow-weak-isolation to grade anyway (a submission could then read "
                  "the solutions and touch other submissions).", file=sys.stderr)
            return 2
        print("Grading anyway (--allow-weak-isolation).", file=sys.stderr)
    subs = report.find_submissions(a.paths)
    if a.csv:
        report.refuse_csv(a.csv, a.paths, subs, a.source)
    hide, keep = sandbox.visible_paths([NOTEBOOKS_DIR, a.source or NOTEBOOKS_DIR, *a.hide,
                                        *(q.parent for q in subs), *([a.csv.parent] if a.csv else [])])
    jobs = max(1, a.jobs)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    opts = {"source": a.source, "jobs": jobs, "max_alive": a.max_alive, "full": a.full, "isolation": iso,
            "accounts": None, "hide": hide, "keep": keep, "threads": threads,
            "timeout_cell": a.timeout_cell, "timeout_notebook": a.timeout_notebook,
            "limits": {"memory_mb": a.max_memory, "nproc": a.max_procs, "max_output": a.max_output,
                       "cpu_s": int(a.timeout_notebook) + 60, "fsize_mb": 256, "tmpfs_mb": 256,
                       "workdir": "/tmp", "env": {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                                                  "OMP_NUM_THREADS": threads, "MPLBACKEND": "Agg"}}}

    def run():
        # the fixed set of accounts (sandbox.py), made under the lock so that `labs cleanup` cannot race it
        opts["accounts"] = sandbox.ensure_accounts(jobs * a.max_alive) if iso.root else None
        return report.grade(a.paths, opts, self_check=True)

    graded, proof = _one_at_a_time(run)
    failed = report.self_check_failures(proof, keep)
    if failed:  # the grader could not grade the instructor's own notebook: no grade is worth reporting
        print("error: the grader could not prove itself: the instructor's own notebook, graded in the same "
              "sandbox, did not score full marks, so no grade was reported:", file=sys.stderr)
        for line in failed:
            print(f"  - {line}", file=sys.stderr)
        return 3
    report.print_table(graded)
    if a.csv:
        report.write_csv(graded, a.csv)
    return report.summary_exit(graded)




def _one_at_a_time(fn):
    """Two graders at once would share the sandbox accounts (and kill each other's sandboxes): wait."""
    import fcntl
    from .sandbox import LOCK
    with open(LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another `labs grade` is running (lock {LOCK}); waiting for it to finish", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        return fn()
