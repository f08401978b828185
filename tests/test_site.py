"""`python -m minimistral.labs site` without a browser: the build, its structure, what the public edition hides,
nothing fetched from another host, refusals of bad paths; and `viz.explorer`, which gives a notebook's own widget
the stored picture the site shows. The pages in a real browser: tests/test_site_browser.py (marker `browser`)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402

from minimistral import viz  # noqa: E402
from minimistral.labs.edition import student_notebook  # noqa: E402
from minimistral.labs.exercises import LabsError, default_notebooks, find_exercises  # noqa: E402
from minimistral.labs.site import MARKER, build_site, default_inputs, solution_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = default_notebooks()
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
OUTSIDE = re.compile(r"""<(?:script|img|link|iframe|source|video|audio|embed|object)\b[^>]*?"""
                     r"""\b(?:src|href|data)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    notebooks, readme, instructors = default_inputs()
    return build_site(tmp_path_factory.mktemp("s") / "public", notebooks, readme, instructors)


@pytest.fixture(scope="module")
def instructor(tmp_path_factory):
    notebooks, readme, instructors = default_inputs()
    return build_site(tmp_path_factory.mktemp("s") / "instructor", notebooks, readme, instructors, solutions=True)


def _pages(built):
    return {p.name: (built.out / p.name).read_text(encoding="utf-8") for p in built.pages}


def _text(html_page: str) -> str:
    """What the page says: tags and the inlined pictures dropped, entities decoded."""
    import html
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"data:image/[^\"']+", "", html_page)))


def test_build_structure_and_time(public):
    print(f"\npublic edition: {len(public.pages)} pages, {public.bytes / 1e6:.1f} MB, built in {public.seconds:.1f} s")
    names = [p.name for p in public.pages]
    assert names == ["index.html", *(f"{nb.stem}.html" for nb in NOTEBOOKS), "instructors.html"]
    for name in names:
        assert (public.out / name).is_file()
    assert (public.out / "mathjax" / "MathJax.js").is_file()
    assert list((public.out / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").rglob("*.woff"))
    assert public.seconds < 120, f"the build took {public.seconds:.0f} s: CI gives build and check 3 minutes"
    manifest = json.loads((public.out / MARKER).read_text())
    assert manifest["edition"] == "public" and [p["page"] for p in manifest["pages"]] == names


def test_every_page_links_the_course_in_order(public):
    pages = _pages(public)
    index = pages["index.html"]
    for nb in NOTEBOOKS:  # the syllabus links every notebook's page
        assert f'href="{nb.stem}.html"' in index, f"index.html has no link to {nb.stem}.html"
    names = list(pages)
    for k, name in enumerate(names):
        nav = re.search(r'<nav class="mm-nav">(.*?)</nav>', pages[name], re.S).group(1)
        prev = re.search(r'class="mm-prev"><a href="([^"]+)"', nav)
        nxt = re.search(r'class="mm-next"><a href="([^"]+)"', nav)
        assert (prev.group(1) if prev else None) == (names[k - 1] if k else None), name
        assert (nxt.group(1) if nxt else None) == (names[k + 1] if k + 1 < len(names) else None), name
    for name, page in pages.items():  # no link to a notebook file or to a page that is not there
        for href in re.findall(r'<a\s[^>]*href="([^"#]+)', page):
            if "://" in href:
                continue
            assert not href.endswith((".ipynb", ".md")), f"{name} links {href}"
            assert (public.out / href).is_file(), f"{name} links {href}, which the site does not have"


def test_nothing_comes_from_another_host(public, instructor):
    for built in (public, instructor):
        for name, page in _pages(built).items():
            found = OUTSIDE.findall(page)
            assert not found, f"{name} loads from another host: {found[:3]}"
            assert "require.js" not in page and "html-manager" not in page and WIDGET_STATE not in page, name
        css = (built.out / "static" / "lab.css").read_text() + (built.out / "static" / "site.css").read_text()
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", css)


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_every_stored_picture_is_on_its_page(public, instructor):
    for built, solutions in ((public, False), (instructor, True)):
        pages = _pages(built)
        for path in NOTEBOOKS:
            nb = nbformat.read(path, as_version=4)
            shown = nb if solutions else student_notebook(nb, str(path))
            stored = [o["data"][t] for c in shown.cells for o in c.get("outputs", []) for t in IMAGE_TYPES
                      if t in o.get("data", {})]
            page = pages[f"{path.stem}.html"]
            shown_n = page.count("<img ")
            assert shown_n == len(stored), f"{path.stem}: {shown_n} pictures, {len(stored)} stored"
            for png in stored:
                assert png.strip()[:200] in page


def test_public_edition_shows_stubs_not_solutions(public):
    pages = _pages(public)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        page = pages[f"{path.stem}.html"]
        text = _text(page)
        stub_src = json.dumps([c.source for c in student_notebook(nb, str(path)).cells])
        secret = [s for s in solution_lines(nb, str(path)) if len(s) >= 8 and json.dumps(s)[1:-1] not in stub_src]
        leaked = [s for s in secret if s in text]
        assert not leaked, f"{path.stem}: solution lines on the public page: {leaked[:3]}"
        code = " ".join(re.findall(r'<div class="cm-editor cm-s-jupyter">(.*?)</div>\s*</div>', page, re.S))
        assert "BEGIN SOLUTION" not in _text(code), f"{path.stem}: a solution marker is shown"
        exercises = find_exercises(nb, str(path))
        assert text.count("NotImplementedError") >= sum(len(e.solution_cells) for e in exercises), path.stem
        assert "mm-fold" not in page or not exercises or "Solution (click" not in page


def test_instructor_edition_folds_the_solutions(instructor):
    pages = _pages(instructor)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        page = pages[f"{path.stem}.html"]
        n = sum(len(e.solution_cells) for e in find_exercises(nb, str(path)))
        assert page.count("<summary>Solution (click to show)</summary>") == n, path.stem
        folded = " ".join(re.findall(r"<details class=\"mm-fold\">(.*?)</details>", page, re.S))
        for line in solution_lines(nb, str(path)):
            assert line in _text(folded), f"{path.stem}: {line!r} is not inside a fold"
    assert "instructor edition" in pages["index.html"]


def test_widgets_show_their_picture_or_a_note(public):
    pages = _pages(public)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        views = [o for c in nb.cells for o in c.get("outputs", [])
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        page = pages[f"{path.stem}.html"]
        assert "application/vnd.jupyter.widget-view" not in page
        blind = sum(not any(t in o["data"] for t in IMAGE_TYPES) for o in views)
        assert page.count('class="mm-widget-note"') >= blind, path.stem
        assert "VBox(children=" not in page, f"{path.stem}: a widget's text stands in for its picture"


def test_refuses_to_write_over_its_inputs(tmp_path):
    notebooks, readme, instructors = default_inputs()
    for out in (ROOT / "notebooks", ROOT, ROOT.parent):
        with pytest.raises(LabsError, match="input"):
            build_site(out, notebooks, readme, instructors, force=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my own page")
    with pytest.raises(LabsError, match="not empty.*--force"):
        build_site(mine, notebooks[:1], readme, instructors)
    assert (mine / "index.html").read_text() == "my own page"
    (tmp_path / "file").write_text("x")
    with pytest.raises(LabsError, match="is a file"):
        build_site(tmp_path / "file", notebooks[:1], readme, instructors)
    with pytest.raises(LabsError, match="does not exist"):
        build_site(tmp_path / "no" / "such" / "dir", notebooks[:1], readme, instructors)
    with pytest.raises(LabsError, match="no such file"):
        build_site(tmp_path / "new", [tmp_path / "99_missing.ipynb"], readme, instructors)
    assert not (tmp_path / "new").exists()


def test_rebuild_replaces_a_site_and_force_keeps_other_files(tmp_path):
    notebooks, readme, instructors = default_inputs()
    site = tmp_path / "site"
    build_site(site, notebooks[:1], readme, instructors)
    (site / "stale.html").write_text("from an earlier build")
    build_site(site, notebooks[:2], readme, instructors)  # a site folder: replaced whole, no --force needed
    assert not (site / "stale.html").exists() and (site / f"{notebooks[1].stem}.html").is_file()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    build_site(theirs, notebooks[:1], readme, instructors, force=True)
    assert (theirs / "notes.txt").read_text() == "keep me" and (theirs / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_cli_one_line_errors(tmp_path):
    env_py = [sys.executable, "-m", "minimistral.labs", "site"]
    r = subprocess.run([*env_py, "--out", str(ROOT / "notebooks")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "input" in r.stderr, r.stderr
    r = subprocess.run([*env_py, "--out", str(tmp_path / "s"), str(tmp_path / "nope.ipynb")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.ipynb" in r.stderr, r.stderr


# ---- viz.explorer: a notebook's own drawing function, with its first picture stored ----------------------------

def _draw_returning(position=3, theta=1.0):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, position], [0, theta])
    return fig


def _draw_showing(position=3, theta=1.0):  # the way notebooks write them: draw, then plt.show()
    plt.figure(figsize=(2, 2))
    plt.plot([0, position], [0, theta])
    plt.show()


@pytest.mark.parametrize("draw", [_draw_returning, _draw_showing])
def test_explorer_stores_its_first_picture_and_redraws(draw):
    plt.close("all")  # figures other tests left open are not this explorer's
    w = viz.explorer(draw, "my explorer", position=(3, 0, 10), theta=(1.0, 0.5, 2.0, 0.5))
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and bundle["image/png"]
    assert bundle["text/plain"].startswith("my explorer (position=3, theta=1.0)")
    first = bundle["image/png"]
    assert type(w.controls["position"]).__name__ == "IntSlider"
    assert type(w.controls["theta"]).__name__ == "FloatSlider" and w.controls["theta"].step == 0.5
    w.controls["position"].value = 9
    (out,) = w.output.outputs
    assert out["data"]["image/png"] != first
    assert not plt.get_fignums()  # one picture, the explorer's: nothing left for the inline backend


def test_explorer_refuses_bad_controls():
    with pytest.raises(ValueError, match="position: value 20 is outside"):
        viz.explorer(_draw_returning, position=(20, 0, 10))
    with pytest.raises(TypeError, match="position="):
        viz.explorer(_draw_returning, position="fast")
    with pytest.raises(ValueError, match="at least one control"):
        viz.explorer(_draw_returning)


def test_explorer_without_ipywidgets_is_a_static_picture(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    plt.close("all")  # figures other tests left open are not this explorer's
    w = viz.explorer(_draw_showing, "clock", position=(3, 0, 10))
    assert isinstance(w, viz.StaticExplorer) and w._repr_mimebundle_()["image/png"]
    assert not plt.get_fignums()


PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_links_pictures_and_widgets_of_a_small_course(tmp_path):
    """A course of two notebooks written here: links between them become page links, a link to a file the site
    does not carry becomes text, a picture beside a notebook travels with it, and a widget shows its PNG or a note."""
    import base64
    folder = tmp_path / "course"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "d.png").write_bytes(base64.b64decode(PNG_1PX))
    one = nbformat.v4.new_notebook()
    one.cells = [
        nbformat.v4.new_markdown_cell("# 01 · One\n\nNext: [two](02_two.ipynb#Part-2), the [code](../lib.py), "
                                      "a picture ![diagram](img/d.png) and $x^2$."),
        nbformat.v4.new_code_cell("show()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<Figure>"}),
            nbformat.v4.new_output("display_data", data={  # an explorer: widget view and its first picture
                "application/vnd.jupyter.widget-view+json": {"model_id": "a", "version_major": 2,
                                                             "version_minor": 0},
                "image/png": PNG_1PX, "text/plain": "mask explorer (seq_len=4)"}),
            nbformat.v4.new_output("display_data", data={  # a bare widget: nothing to show without a kernel
                "application/vnd.jupyter.widget-view+json": {"model_id": "b", "version_major": 2,
                                                             "version_minor": 0},
                "text/plain": "VBox(children=(IntSlider(value=1),))"})])]
    one.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    two = nbformat.v4.new_notebook()
    two.cells = [nbformat.v4.new_markdown_cell("# 02 · Two\n\n## Part 2\n\nBack to [one](01_one.ipynb).")]
    nbformat.write(one, folder / "01_one.ipynb")
    nbformat.write(two, folder / "02_two.ipynb")
    readme = tmp_path / "README.md"
    readme.write_text("# A course\n\n| nb |\n|---|\n| `01_one` |\n")
    built = build_site(tmp_path / "out", [folder / "01_one.ipynb", folder / "02_two.ipynb"], readme, None)
    pages = _pages(built)
    assert [p.name for p in built.pages] == ["index.html", "01_one.html", "02_two.html"]
    assert 'href="01_one.html"' in pages["index.html"] and 'href="02_two.html"' in pages["index.html"]
    page = pages["01_one.html"]
    assert 'href="02_two.html#Part-2"' in page and "lib.py" not in page.replace("the code", "")
    assert 'src="img/d.png"' in page and (built.out / "img" / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count("<img ") == 3  # the markdown picture, the figure, the explorer's picture
    assert "mask explorer (seq_len=4)" in page and "VBox(children" not in page
    assert page.count('class="mm-widget-note"') == 2 and WIDGET_STATE not in page
    assert 'href="01_one.html"' in pages["02_two.html"]
    assert json.loads((built.out / MARKER).read_text())["pages"][1]["pictures"] == 3


def test_a_text_printed_piece_by_piece_is_one_block(tmp_path):
    """A generation printed token by token (`print(piece, end="", flush=True)`) is stored as one stream output
    per token; the page shows it as one text, as JupyterLab does, not one block per token."""
    folder = tmp_path / "course"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    pieces = ["In", " the", " beginning", " God"]
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · One"), nbformat.v4.new_code_cell("stream()", outputs=[
        *(nbformat.v4.new_output("stream", name="stdout", text=p) for p in pieces),
        nbformat.v4.new_output("stream", name="stderr", text="a warning\n"),
        nbformat.v4.new_output("stream", name="stdout", text="\ndone\n")])]
    nbformat.write(nb, folder / "01_one.ipynb")
    readme = tmp_path / "README.md"
    readme.write_text("# A course\n")
    built = build_site(tmp_path / "out", [folder / "01_one.ipynb"], readme, None)
    page = (built.out / "01_one.html").read_text(encoding="utf-8")
    assert "In the beginning God" in _text(page)
    outputs = re.findall(r'<div class="[^"]*\bjp-OutputArea-output\b', page)
    assert len(outputs) == 3, "one block for the tokens, one for stderr, one for the stdout after it"
