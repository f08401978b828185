"""Drop per-run metadata from stored notebooks, so that re-running a notebook changes only what it shows.

Executing a notebook (jupytext --execute, nbclient, JupyterLab) stamps every code cell with the times it
ran (`metadata.execution`, or `ExecuteTime` from the execute-time extension): noise in every diff and
review. This removes those keys and nothing else (outputs, nbgrader metadata, widget state stay).

    python .ci/clean_notebooks.py notebooks/*.ipynb           # clean in place
    python .ci/clean_notebooks.py --check notebooks/*.ipynb   # exit 1 naming the notebooks that need it
"""

import argparse
import sys

import nbformat

RUN_KEYS = ("execution", "ExecuteTime")  # cell metadata written by running, not by the author


def clean(nb) -> int:
    """Remove the per-run keys from every cell of nb (in place); return how many were removed."""
    removed = 0
    for cell in nb.cells:
        for key in RUN_KEYS:
            if cell.metadata.pop(key, None) is not None:
                removed += 1
    return removed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python .ci/clean_notebooks.py", description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--check", action="store_true", help="change nothing; fail if a notebook carries run metadata")
    a = p.parse_args(argv)
    dirty = []
    for path in a.notebooks:
        nb = nbformat.read(path, as_version=4)
        if clean(nb):
            dirty.append(path)
            if not a.check:
                nbformat.write(nb, path)
    if a.check and dirty:
        print(f"run metadata in {', '.join(dirty)}: run python .ci/clean_notebooks.py {' '.join(dirty)}")
        return 1
    if not a.check:
        print(f"cleaned {len(dirty)} of {len(a.notebooks)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
