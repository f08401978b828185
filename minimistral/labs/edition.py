"""The student edition (solutions stubbed), the student bundle, and the nbgrader / JupyterLab cell metadata.

    python -m minimistral.labs student --out DIR [NOTEBOOK ...]           # stubbed notebooks only
    python -m minimistral.labs student --bundle --out DIR                # + the library and its data, installable
    python -m minimistral.labs tag [NOTEBOOK ...] [--check]              # metadata in the .ipynb and its .py twin
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat

from .exercises import STUB, Exercise, LabsError, NOTEBOOKS_DIR, find_exercises, solution_regions

HIDDEN = {"source_hidden": True}  # JupyterLab's "collapsed input" cell metadata, under the "jupyter" key



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
        for i in ex.solution_cells:  # the student must see the stub they are to fill in
            jup = nb.cells[i].metadata.get("jupyter", {})
            jup.pop("source_hidden", None)
            if not jup:
                nb.cells[i].metadata.pop("jupyter", None)
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


def read_notebook(path: Path):
    """A notebook, or LabsError naming the file and what is wrong with it (in one line)."""
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, UnicodeDecodeError) as e:
        raise LabsError(f"{path}: cannot be read ({e.strerror if isinstance(e, OSError) else e})") from None
    except Exception as e:  # nbformat's NotJSONError, a JSON error, a validation error
        what = str(e).split("\n")[0][:160]
        raise LabsError(f"{path}: not a Jupyter notebook ({type(e).__name__}: {what})") from None


def _holds_solutions(nb) -> bool:
    """A notebook with a solution region that is not the stub: an instructor's (solved) notebook."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.split("\n")
        try:
            regions = solution_regions(cell.source)
        except LabsError:
            return True  # unbalanced markers: not a stub we wrote; leave it alone
        for b, e, _ in regions:
            body = [x.strip() for x in lines[b + 1:e] if x.strip()]
            if body and tuple(body) != STUB:
                return True
    return False


def refuse_out(notebooks: list[Path], out: Path, flag: str = "--out") -> None:
    """The student edition never replaces what it reads: refuse a file, a folder of the source notebooks, and
    any folder holding a solved notebook (with or without --force)."""
    if out.exists() and not out.is_dir():
        raise LabsError(f"{flag} {out} is a file; choose a folder for the student edition")
    target = out.resolve()
    for path in notebooks:
        if path.resolve().parent == target:
            raise LabsError(f"{flag} {out} is the folder of the source notebook {path}: the student edition would "
                            "replace the solved notebooks by their stubs; choose another folder")
    if target == NOTEBOOKS_DIR.resolve():
        raise LabsError(f"{flag} {out} is the course's notebooks folder; choose another folder")
    if out.is_dir():
        for q in sorted(out.glob("*.ipynb")):
            try:
                nb = nbformat.read(q, as_version=4)
            except Exception:
                continue  # not a notebook: --force may replace it (a stubbed file of the same name)
            if _holds_solutions(nb):
                raise LabsError(f"{flag} {out} holds {q.name}, a notebook with its solutions (an instructor's "
                                "notebook); the student edition never writes where solved notebooks are, even "
                                "with --force: choose another folder")


def write_student_edition(notebooks: list[Path], out: Path, force: bool = False, flag: str = "--out") -> list[Path]:
    refuse_out(notebooks, out, flag)
    if out.exists() and any(out.iterdir()) and not force:
        raise LabsError(f"{out} is not empty; choose an empty folder or pass --force to overwrite files in it")
    sources = [(path, read_notebook(path)) for path in notebooks]  # every one readable before anything is written
    students = [(path, nb, student_notebook(nb, str(path))) for path, nb in sources]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb, student in students:
        target = out / path.name
        nbformat.write(student, target)
        written.append(target)
        for extra in local_files(nb, path.parent):
            dest = out / extra.relative_to(path.parent.resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, dest)
            written.append(dest)
    return written


# Everything of the repository that a student needs, and nothing with a solution in it: the notebooks travel
# stubbed, the package and its data as they are (they hold no solutions; a test checks that).
BUNDLE_FILES = ("pyproject.toml", "environment.yml", "LICENSE")
BUNDLE_DIRS = ("minimistral", "data")


def write_bundle(notebooks: list[Path], out: Path, force: bool = False) -> list[Path]:
    """A folder a student installs with `pip install -e DIR` (or conda) and opens in JupyterLab: the stubbed
    notebooks in DIR/notebooks, the library with its data beside them. No solved notebook is in it."""
    root = NOTEBOOKS_DIR.parent
    missing = [n for n in BUNDLE_FILES[:1] + BUNDLE_DIRS if not (root / n).exists()]
    if missing:
        raise LabsError(f"{root}: no {missing[0]} here; build the bundle from a clone of the repository")
    if out.exists() and not out.is_dir():
        raise LabsError(f"--out {out} is a file; choose a folder for the bundle")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents and out.resolve().relative_to(
            root.resolve()).parts[0] in BUNDLE_DIRS + ("notebooks",):
        raise LabsError(f"--out {out} is inside the repository the bundle is copied from ({root}); choose a folder "
                        "outside it")
    refuse_out(notebooks, out / "notebooks", "--out")
    if out.exists() and any(out.iterdir()) and not force:
        raise LabsError(f"{out} is not empty; choose an empty folder or pass --force to overwrite files in it")
    written = write_student_edition(notebooks, out / "notebooks", force=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in BUNDLE_DIRS:
        shutil.copytree(root / name, out / name, ignore=ignore, dirs_exist_ok=True)
        written.append(out / name)
    for name in BUNDLE_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, out / name)
            written.append(out / name)
    (out / "README.md").write_text(
        "# minimistral: student edition\n\nInstall once, then open the notebooks:\n\n"
        "```bash\npip install -e .            # or: conda env create -f environment.yml\n"
        "jupyter lab notebooks/\n```\n\nEach exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`; "
        "the cell after it checks your answer and prints `[PASS]`, `[FAIL]` with a hint, or `[TODO]`.\n")
    written.append(out / "README.md")
    return written


# ----------------------------------------------------------------------------------------------------------------
# nbgrader metadata, and solutions collapsed by default in JupyterLab

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


PY_HEADER = re.compile(r'^# %%( nbgrader=\{[^\n]*?\})?( jupyter=\{"source_hidden": true\})?$')


def _header(meta: dict, hidden: bool) -> str:
    return "# %% nbgrader=" + json.dumps(meta) + (' jupyter={"source_hidden": true}' if hidden else "")


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
        lines[n] = _header(meta, hidden=meta["solution"])
    new = "\n".join(lines)
    if new == text:
        return False
    check = jupytext.reads(new, fmt="py:percent")
    if [c.source for c in check.cells] != [c.source for c in nb.cells] or any(
            check.cells[i].metadata.get("nbgrader") != meta
            or (check.cells[i].metadata.get("jupyter", {}).get("source_hidden") is True) != meta["solution"]
            for i, meta in wanted.items()):
        raise LabsError(f"{py}: tagging would change cell sources under jupytext; tag it by hand")
    if write:
        py.write_text(new)
    return True


def tag(paths: list[Path], write: bool = True, twins: bool = True, errors: list | None = None) -> list[Path]:
    """Add nbgrader metadata to every exercise cell and collapse solution cells in JupyterLab (idempotent).
    Returns the files changed (or that would be). With an `errors` list, a notebook that cannot be tagged is reported there and the others are still tagged."""
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
                if i in wanted and wanted[i]["solution"] and cell.metadata.get("jupyter", {}).get(
                        "source_hidden") is not True:  # collapsed for self-paced learners, one click away
                    cell.metadata.setdefault("jupyter", {}).update(HIDDEN)
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


