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
    g.add_argument("--timeout-cell", type=float, default=120, help="seconds per check and submission (default 120)")
    g.add_argument("--timeout-notebook", type=float, default=600,
                   help="seconds of sandbox time per submission (default 600)")
    g.add_argument("--max-output", type=int, default=10_000_000, help="bytes a sandbox may print (default 10 MB)")
    g.add_argument("--max-memory", type=int, default=4096,
                   help="MiB per sandbox, shared memory included (default 4096; 0 = no limit)")
    g.add_argument("--max-procs", type=int, default=64, help="processes and threads per sandbox (default 64)")
    g.add_argument("--jobs", type=int, default=2, help="source notebooks graded at once (default 2)")
    g.add_argument("--max-alive", type=int, default=12, help="sandboxes alive at once per job (default 12)")
    g.add_argument("--full", action="store_true",
                   help="run every non-check cell of a submission, not only its definitions (slower)")
    g.add_argument("--hide", type=Path, action="append", default=[],
                   help="another folder the sandboxes must not see (repeatable)")
    g.add_argument("--csv", type=Path, help="also write the table as CSV (formula-safe)")
    g.add_argument("--allow-weak-isolation", action="store_true",
                   help="grade even where the sandbox cannot be isolated (not root, no namespaces); UNSAFE")

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
            from .edition import write_bundle, write_student_edition
            notebooks = notebooks_or_default(a.notebooks)
            written = (write_bundle if a.bundle else write_student_edition)(notebooks, a.out, a.force)
            n = sum(len(find_exercises(nbformat.read(q, 4), str(q))) for q in notebooks)
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
    hide, keep = sandbox.visible_paths([NOTEBOOKS_DIR, a.source or NOTEBOOKS_DIR, *a.hide,
                                        *(q.parent for q in subs), *([a.csv.parent] if a.csv else [])])
    jobs = max(1, a.jobs)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    accounts = sandbox.ensure_accounts(jobs * a.max_alive) if iso.root else None
    opts = {"source": a.source, "jobs": jobs, "max_alive": a.max_alive, "full": a.full, "isolation": iso,
            "accounts": accounts, "hide": hide, "keep": keep, "threads": threads,
            "timeout_cell": a.timeout_cell, "timeout_notebook": a.timeout_notebook,
            "limits": {"memory_mb": a.max_memory, "nproc": a.max_procs, "max_output": a.max_output,
                       "cpu_s": int(a.timeout_notebook) + 60, "fsize_mb": 256, "tmpfs_mb": 256,
                       "workdir": "/tmp", "env": {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                                                  "OMP_NUM_THREADS": threads, "MPLBACKEND": "Agg"}}}
    graded = _one_at_a_time(lambda: report.grade(a.paths, opts))
    report.print_table(graded)
    if a.csv:
        report.write_csv(graded, a.csv)
    return report.summary_exit(graded)


LOCK = "/run/lock/minimistral-grade.lock" if os.path.isdir("/run/lock") else "/tmp/minimistral-grade.lock"


def _one_at_a_time(fn):
    """Two graders at once would share the sandbox accounts (and kill each other's sandboxes): wait."""
    import fcntl
    with open(LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another `labs grade` is running (lock {LOCK}); waiting for it to finish", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        return fn()
