"""The course as a static website, built from the notebooks' stored outputs (nothing is executed).

    python -m minimistral.labs site --out DIR                 # public edition: exercises show stub and hint
    python -m minimistral.labs site --out DIR --solutions     # instructor edition: solutions folded under a click

Pages: index.html (the README, its syllabus linking each notebook's page), one page per notebook in course
order with previous/next links, instructors.html (notebooks/INSTRUCTORS.md). Everything a page needs is in
DIR: pictures are inlined, MathJax 2 (with its web fonts, from the `jupyter-server-mathjax` package) is copied
to DIR/mathjax, the notebook CSS to DIR/static. No page requests anything from another host, so the folder
works from any web server, GitHub Pages, an LMS, or opened from disk.

Widgets cannot run without a kernel: an explorer shows the picture it stored beside its widget (see
minimistral/viz/explorers.py), and a widget with no picture shows a note saying so.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import BEGIN, END, LabsError, find_exercises

MARKER = ".minimistral-site"  # written into every site folder: a rebuild may replace a folder that has it
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
# Outputs a static page can show, best first: no widget type, so an explorer's stored PNG wins.
DISPLAY_PRIORITY = ["text/html", "text/markdown", "image/svg+xml", "text/latex", "image/png", "image/jpeg",
                    "text/plain"]
WIDGET_NOTE = ("<div class=\"mm-widget-note\">An interactive widget is here in the notebook: open it in JupyterLab "
               "to use it (a static page has no kernel to drive it).</div>")
EXPLORER_NOTE = ("<div class=\"mm-widget-note\"><b>Explorer</b>: {}. This page shows its first picture; in JupyterLab "
                 "its controls redraw it.</div>")


@dataclass
class Page:
    """One page of the site: its file name, title, and the notebook (or markdown) it comes from."""
    name: str                      # "03_rope.html"
    title: str
    source: Path
    nb: object = None              # the notebook as rendered (stubbed in the public edition)
    pictures: int = 0              # stored pictures the page must show
    files: list = field(default_factory=list)      # pictures beside the notebook that its markdown shows


# ----------------------------------------------------------------------------------------------------------------
# Checking the paths before anything is written


def _is_site(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def check_out(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an --out that holds the inputs or someone's files; one line each, naming the path."""
    target = out.expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise LabsError(f"--out {out}: is a file, not a folder; name a new or empty folder")
    for src in inputs:
        here = src.resolve()
        if target == here or target in here.parents:
            raise LabsError(f"--out {out}: holds the site's input {src}; the site would be written over it. "
                            "Name a folder outside the notebooks and the repository root (e.g. site/)")
    if target.exists() and any(target.iterdir()) and not _is_site(target) and not force:
        raise LabsError(f"--out {out}: not empty and not a site built by this command; name a new or empty folder, "
                        "or pass --force to add the site's files to it")
    if not target.parent.exists():
        raise LabsError(f"--out {out}: its parent folder {target.parent} does not exist")
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise LabsError(f"--out {out}: not writable here")


def mathjax_dir() -> Path:
    """MathJax 2, fonts included, as the `jupyter-server-mathjax` package ships it."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise LabsError("the site carries its own MathJax and takes it from the jupyter-server-mathjax package: "
                        "pip install jupyter-server-mathjax") from None
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file() or not (static / "fonts" / "HTML-CSS" / "STIX-Web").is_dir():
        raise LabsError(f"{static}: MathJax.js or its STIX-Web fonts are missing; reinstall jupyter-server-mathjax")
    return static


# ----------------------------------------------------------------------------------------------------------------
# Preparing the notebooks: the edition, the widgets, the links


def page_name(stem: str) -> str:
    return f"{stem}.html"


def link_map(notebooks: list[Path], readme: Path | None, instructors: Path | None) -> dict[Path, str]:
    """Input file (resolved) -> the page that shows it."""
    pages = {nb.resolve(): page_name(nb.stem) for nb in notebooks}
    for nb in notebooks:  # a link to the .py twin is a link to the notebook too
        pages[nb.with_suffix(".py").resolve()] = page_name(nb.stem)
    if readme is not None:
        pages[readme.resolve()] = "index.html"
    if instructors is not None:
        pages[instructors.resolve()] = "instructors.html"
    return pages


MD_LINK = re.compile(r"(\]\()([^)\s]+)(\))|(\bhref=[\"'])([^\"']+)([\"'])")


def rewrite_links(markdown: str, folder: Path, pages: dict[Path, str], files: frozenset = frozenset()) -> str:
    """Links to the course's files become links to their pages; `files` (pictures beside a notebook) travel
    with the site under the same relative path; a relative link to any other file of the repository (which
    the site does not carry) keeps its text and loses its target."""
    def one(m):
        pre, target, post = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), m.group(5),
                                                                                     m.group(6))
        if "://" in target or target.startswith(("#", "mailto:", "data:")):
            return m.group(0)
        path, _, frag = target.partition("#")
        if path in pages.values() or (folder / path).resolve() in files:  # a page, or a file the site carries
            return m.group(0)
        page = pages.get((folder / path).resolve())
        if page is None:
            return f"{pre}#{post}" if pre.startswith("]") else m.group(0)  # dropped below
        return f"{pre}{page}{'#' + frag if frag else ''}{post}"
    out = MD_LINK.sub(one, markdown)
    return re.sub(r"\[([^\]]+)\]\(#\)", r"\1", out)  # [text](#) from an unknown file: plain text


def _code_names(markdown: str, stems: set[str]) -> str:
    """`03_rope` (a notebook named in code, as the README's syllabus does) becomes a link to its page."""
    return re.sub(r"(?<!\[)`(\d\d_[A-Za-z0-9_]+)`",
                  lambda m: f"[`{m.group(1)}`]({page_name(m.group(1))})" if m.group(1) in stems else m.group(0),
                  markdown)


TEXT_IN_MATH = re.compile(r"\\text\{([^{}]*)\}")


def _text_escapes(markdown: str) -> str:
    """`\\text{head\\_dim}` shows its backslash under MathJax 2 (which does not read escapes in text mode;
    JupyterLab's MathJax 3 does): the site writes `\\text{head_dim}`."""
    return TEXT_IN_MATH.sub(lambda m: "\\text{" + re.sub(r"\\([_%&#$])", r"\1", m.group(1)) + "}", markdown)


def _static_outputs(cell) -> int:
    """Drop the widget views (a static page cannot run them); keep an explorer's stored picture, and put a
    note where a widget left nothing to see. Returns the number of pictures left in the cell."""
    pictures, outputs = 0, []
    for out in cell.get("outputs", []):
        data = out.get("data")
        caption = None
        if data is not None and WIDGET_VIEW in data:
            del data[WIDGET_VIEW]
            if not any(t in data for t in IMAGE_TYPES):
                out = nbformat.v4.new_output("display_data", data={"text/html": WIDGET_NOTE,
                                                                   "text/plain": "(interactive widget)"})
            else:  # an explorer: its stored first picture, and what it does in JupyterLab
                caption = nbformat.v4.new_output("display_data", data={
                    "text/html": EXPLORER_NOTE.format(html.escape(data.get("text/plain", "an explorer"))),
                    "text/plain": "(explorer)"})
        if data is not None and any(t in out.get("data", {}) for t in IMAGE_TYPES):
            pictures += 1
        outputs += [out] + ([caption] if caption else [])
    cell.outputs = outputs
    return pictures


def solution_lines(nb, where: str) -> list[str]:
    """The lines between the solution markers, in the instructor's notebook (what the public edition hides)."""
    from .exercises import solution_regions
    lines = []
    for ex in find_exercises(nb, where):
        for i in ex.solution_cells:
            src = nb.cells[i].source.split("\n")
            for begin, end, _ in solution_regions(nb.cells[i].source, where):
                lines += [s.strip() for s in src[begin + 1:end] if s.strip()]
    return lines


def prepare_notebook(path: Path, solutions: bool, pages: dict[Path, str], stems: set[str]) -> Page:
    from .edition import local_files, student_notebook
    where = str(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several kinds for a broken file
        raise LabsError(f"{path}: not a readable notebook ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    fold = set()
    if solutions:
        fold = {i for ex in find_exercises(nb, where) for i in ex.solution_cells}
    else:
        nb = student_notebook(nb, where)  # the labs' own stubber: the same stub students get
        for ex in find_exercises(nb, where):  # the page shows the stub alone: the markers would announce a
            for i in ex.solution_cells:       # solution that is not there
                cell = nb.cells[i]
                cell.source = "\n".join(s for s in cell.source.split("\n") if s.strip() not in (BEGIN, END))
    nb.metadata.pop("widgets", None)  # widget state: only a live kernel (or a CDN renderer) could use it
    pictures = 0
    files = frozenset(local_files(nb, path.parent))  # pictures the markdown shows from beside the notebook
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = _text_escapes(rewrite_links(_code_names(cell.source, stems), path.parent, pages, files))
            pictures += len(re.findall(r"!\[[^\]]*\]\(|<img\b", cell.source))
        elif cell.cell_type == "code":
            pictures += _static_outputs(cell)
            if i in fold:
                cell.metadata["mm_fold"] = "Solution (click to show)"
            elif cell.metadata.get("jupyter", {}).get("source_hidden"):
                cell.metadata["mm_fold"] = "Code (click to show)"
    title = next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.split("\n") if line.startswith("# ")), path.stem)
    return Page(page_name(path.stem), title, path, nb, pictures, sorted(files))


def markdown_page(path: Path, name: str, pages: dict[Path, str], stems: set[str], extra: str = "") -> Page:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LabsError(f"{path}: cannot read it ({e.__class__.__name__}); the site needs it as UTF-8 markdown")
    text = rewrite_links(_code_names(text, stems), path.parent, pages) + extra
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(text)]
    title = next((line.lstrip("# ").strip() for line in text.split("\n") if line.startswith("# ")), path.stem)
    pictures = len(re.findall(r"!\[[^\]]*\]\(|<img\b", text))
    return Page(name, title, path, nb, pictures)


# ----------------------------------------------------------------------------------------------------------------
# Rendering: nbconvert's JupyterLab template, without its CDN scripts, with a local MathJax and a navigation bar

TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="static/lab.css">
<link rel="stylesheet" href="static/site.css">
{%- endblock notebook_css -%}
{%- block html_head_js_mathjax -%}
<link rel="icon" href="data:,">
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true,
            ignoreClass: "mm-page", processClass: "jp-MarkdownOutput"},
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true},
               // MathJax's blank fallback font points at about:blank, which Chromium refuses with a console
               // error; a local() name that does not exist gives the same fallback without a request
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  messageStyle: "none",
  menuSettings: {zoom: "None"}
});
MathJax.Hub.Queue(function () { document.body.setAttribute("data-math", "done"); });
</script>
<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
<body class="jp-Notebook mm-page" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.mm_nav }}
<main>
{%- endblock body_header -%}
{% block body_footer %}
</main>
{{ resources.mm_nav_bottom }}
</body>
{% endblock body_footer %}
{%- block footer -%}
</html>
{%- endblock footer -%}
{% block input_group -%}
{%- if cell.metadata.get("mm_fold") -%}
<details class="mm-fold"><summary>{{ cell.metadata["mm_fold"] }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{% endblock input_group %}
{%- block data_widget_view scoped -%}{%- endblock data_widget_view -%}
{#- The course's own code, highlighted by pygments (which escapes it): no second pass through an HTML cleaner -#}
{% block input %}
<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor" data-type="inline">
     <div class="cm-editor cm-s-jupyter">
{{ cell.source | highlight_code(metadata=cell.metadata) }}
     </div>
</div>
{%- endblock input %}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img alt="a figure drawn by the code above" src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}">
</div>
{%- endblock data_png %}
"""

SITE_CSS = """
.mm-nav { display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; align-items: baseline; padding: 0.6em 1.2em;
  border-bottom: 1px solid #ddd; background: #f7f7f9; font-family: var(--jp-ui-font-family); font-size: 14px; }
.mm-nav.mm-bottom { border-top: 1px solid #ddd; border-bottom: none; margin-top: 2em; }
.mm-nav .mm-home { font-weight: bold; }
.mm-nav .mm-edition { color: #666; }
.mm-nav .mm-prevnext { margin-left: auto; display: flex; gap: 1.2em; }
.mm-nav a { color: #1a5fb4; text-decoration: none; }
.mm-nav a:hover { text-decoration: underline; }
main { max-width: 1100px; margin: 0 auto; padding: 1em 1.2em 2em; }
details.mm-fold > summary { cursor: pointer; color: #8a5a00; font-family: var(--jp-ui-font-family);
  font-size: 13px; padding: 0.3em 0.6em; background: #fff7e0; border: 1px solid #f0d58c; border-radius: 3px; }
details.mm-fold > summary { margin-left: calc(var(--jp-cell-prompt-width, 64px) + 4px); }
details.mm-fold[open] > summary { margin-bottom: 0.3em; }
.mm-widget-note { padding: 0.5em 0.8em; background: #eef4fb; border-left: 3px solid #7a9cc6;
  font-family: var(--jp-ui-font-family); font-size: 13px; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
/* MathJax's hidden MathML for screen readers asks for TeX web fonts (\\mathcal, \\mathbb) that the MathJax
   package does not ship: a plain font there, so no request fails; the visible maths uses STIX-Web */
.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: serif !important; }
.jp-RenderedMarkdown a code { color: var(--jp-content-link-color, #1a5fb4); }
.jp-RenderedMarkdown pre { background: #f5f5f5; padding: 0.5em 0.8em; border-radius: 3px; overflow-x: auto; }
"""

LAB_CSS_EXTRA = """
a.anchor-link { display: none; }
.jp-InputArea { overflow: hidden; }
.jp-InputArea-editor { overflow: hidden; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0; font-family: inherit;
  font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }
"""


def _nbconvert_template_dirs() -> list:
    """nbconvert's own templates sit under the prefix it was installed into, which jupyter's search path misses
    in a virtual environment layered over another (`venv --system-site-packages`)."""
    import nbconvert
    prefix = Path(nbconvert.__file__).resolve().parents[4]  # <prefix>/lib/pythonX.Y/site-packages/nbconvert
    found = prefix / "share" / "jupyter" / "nbconvert" / "templates"
    return [str(found)] if found.is_dir() else []


def _exporter():
    import jinja2
    from nbconvert import HTMLExporter
    from nbconvert.exporters.templateexporter import TemplateExporter
    from nbconvert.filters.highlight import Highlight2HTML
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    class SiteExporter(HTMLExporter):
        """HTMLExporter without its last step, which re-parses each page with BeautifulSoup to add alt texts
        (a third of the build time): the template above writes them."""

        def from_notebook_node(self, nb, resources=None, **kw):
            lang = nb.metadata.get("language_info", {})
            self.register_filter("highlight_code", Highlight2HTML(
                pygments_lexer=lang.get("pygments_lexer", lang.get("name")), parent=self))
            return TemplateExporter.from_notebook_node(self, nb, resources, **kw)

    from traitlets.config import Config
    priority = Config({"NbConvertBase": {"display_data_priority": DISPLAY_PRIORITY}})  # no widget type
    exporter = SiteExporter(config=priority, template_name="lab", template_file="mm_site.html.j2",
                            extra_template_basedirs=_nbconvert_template_dirs(),
                            extra_template_paths=_nbconvert_template_dirs(),
                            extra_loaders=[jinja2.DictLoader({"mm_site.html.j2": TEMPLATE})])
    exporter.exclude_input_prompt = False
    # consecutive prints of one stream (a generation printed token by token, flushed each time) are stored as
    # one output each; JupyterLab shows them as one text, the lab template as one block per output
    exporter.register_preprocessor(CoalesceStreamsPreprocessor, enabled=True)
    return exporter


def _lab_css(exporter) -> str:
    env = exporter.environment
    return "\n".join(env.loader.get_source(env, f"static/{n}")[0] for n in ("index.css", "theme-light.css")) \
        + LAB_CSS_EXTRA


def _nav(pages: list[Page], k: int, edition: str, bottom: bool = False) -> str:
    a = lambda p, text: f'<a href="{p.name}">{html.escape(text)}</a>'  # noqa: E731
    prev = a(pages[k - 1], f"← {pages[k - 1].title}") if k > 0 else ""
    nxt = a(pages[k + 1], f"{pages[k + 1].title} →") if k + 1 < len(pages) else ""
    cls = "mm-nav mm-bottom" if bottom else "mm-nav"
    return (f'<nav class="{cls}"><a class="mm-home" href="index.html">minimistral</a>'
            f'<a href="index.html#Syllabus">syllabus</a><a href="instructors.html">instructors</a>'
            f'<span class="mm-edition">{edition}</span>'
            f'<span class="mm-prevnext"><span class="mm-prev">{prev}</span><span class="mm-next">{nxt}</span></span>'
            f"</nav>")


def _syllabus_extra(readme_text: str, notebooks: list[Path], titles: dict[str, str]) -> str:
    """Notebooks the README's syllabus does not name still get a link on the index page."""
    missing = [nb for nb in notebooks if f"`{nb.stem}`" not in readme_text and f"{nb.stem}.ipynb" not in readme_text]
    if not missing:
        return ""
    lines = "\n".join(f"- [{titles[nb.stem]}]({page_name(nb.stem)})" for nb in missing)
    return f"\n\n## More notebooks\n\n{lines}\n"


# ----------------------------------------------------------------------------------------------------------------
# The build


@dataclass
class Built:
    out: Path
    pages: list[Page]
    seconds: float
    bytes: int


def build_site(out: Path, notebooks: list[Path], readme: Path | None, instructors: Path | None,
               solutions: bool = False, force: bool = False) -> Built:
    """Write the site to `out`. The pages are built in a folder beside `out` and moved in only when all of
    them rendered, so a failure leaves `out` as it was."""
    start = time.perf_counter()
    for p in [*notebooks, *(x for x in (readme, instructors) if x is not None)]:
        if not p.is_file():
            raise LabsError(f"{p}: no such file")
    inputs = [*notebooks, *(x for x in (readme, instructors) if x is not None)]
    folders = {p.parent for p in inputs} | ({readme.parent} if readme else set())
    check_out(out, [*inputs, *folders], force)
    mathjax = mathjax_dir()
    stems = {nb.stem for nb in notebooks}
    pages_of = link_map(notebooks, readme, instructors)
    edition = "instructor edition (solutions folded)" if solutions else "public edition"

    course = [prepare_notebook(nb, solutions, pages_of, stems) for nb in notebooks]
    pages = []
    if readme is not None:
        extra = _syllabus_extra(readme.read_text(encoding="utf-8"), notebooks,
                                {nb.stem: pg.title for nb, pg in zip(notebooks, course)})
        pages.append(markdown_page(readme, "index.html", pages_of, stems, extra))
    else:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(
            "# The course\n\n" + "\n".join(f"1. [{pg.title}]({pg.name})" for pg in course))]
        pages.append(Page("index.html", "The course", Path("index.html"), nb, 0))
    pages += course
    if instructors is not None:
        pages.append(markdown_page(instructors, "instructors.html", pages_of, stems))

    target = out.expanduser().resolve()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; a web server must read the site
    try:
        exporter = _exporter()
        (work / "static").mkdir()
        (work / "static" / "lab.css").write_text(_lab_css(exporter), encoding="utf-8")
        (work / "static" / "site.css").write_text(SITE_CSS, encoding="utf-8")
        shutil.copytree(mathjax, work / "mathjax")
        for k, page in enumerate(pages):
            resources = {"metadata": {"name": page.title}, "mm_nav": _nav(pages, k, edition),
                         "mm_nav_bottom": _nav(pages, k, edition, bottom=True)}
            try:
                body, _ = exporter.from_notebook_node(page.nb, resources=resources)
            except Exception as e:
                raise LabsError(f"{page.source}: could not be rendered ({type(e).__name__}: {e})") from e
            (work / page.name).write_text(body, encoding="utf-8")
            for extra in page.files:  # same path relative to the page as beside the notebook
                dest = work / extra.relative_to(page.source.parent.resolve())
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(extra, dest)
        manifest = {"edition": "instructor" if solutions else "public",
                    "pages": [{"page": p.name, "title": p.title, "source": p.source.name, "pictures": p.pictures}
                              for p in pages]}
        (work / MARKER).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _swap_in(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return Built(target, pages, time.perf_counter() - start, size)


def _swap_in(work: Path, target: Path) -> None:
    """A new or earlier-built site folder is replaced whole; into someone's folder (--force) the site's files
    are moved one by one, replacing only the names the site uses."""
    if not target.exists() or not any(target.iterdir()) or _is_site(target):
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
        work.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    for item in work.iterdir():
        dest = target / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        item.rename(dest)


def default_inputs():
    """The shipped notebooks, the README and the instructors' guide, from a clone of the repository."""
    from .exercises import NOTEBOOKS_DIR, default_notebooks
    readme = NOTEBOOKS_DIR.parent / "README.md"
    instructors = NOTEBOOKS_DIR / "INSTRUCTORS.md"
    return default_notebooks(), readme if readme.is_file() else None, instructors if instructors.is_file() else None
