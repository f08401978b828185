"""The course website in a real browser (pytest -m browser tests/test_site_browser.py -s).

Builds both editions of `python -m minimistral.labs site` and opens EVERY page in headless Chromium, served from
localhost with no other host reachable, and checks per page: every stored picture rendered (naturalWidth > 0),
as many as the notebook stores; no failed request and no request to another host; no console error; every
formula typeset by the site's own MathJax, and no raw `$...$` or `\\begin` left in the prose; every link
resolves (page and anchor); in the public edition no solution marker and no solution line. Prints a table per
edition; screenshots of a few pages go to screenshots/site/ (git ignores screenshots/).

Needs Debian's chromium and the Python playwright package, as tests/test_browser.py does.
"""

import functools
import html
import http.server
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import nbformat
import pytest

from minimistral.labs.edition import student_notebook
from minimistral.labs.exercises import BEGIN, default_notebooks, find_exercises
from minimistral.labs.site import build_site, default_inputs, solution_lines

from conftest import chromium_skip_reason

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "screenshots" / "site"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
SHOT_PAGES = {"index.html", "02_embeddings_and_rmsnorm.html", "03_rope.html", "05_sliding_window.html"}
RAW_MATH = re.compile(r"\$[^$\s][^$\n]{0,200}?\$|\\begin\{")

PAGE_JS = """() => {
  const imgs = [...document.querySelectorAll('main img')];
  const md = [...document.querySelectorAll('.jp-MarkdownOutput')].map(e => {
    const c = e.cloneNode(true);  // the prose only: code (where $ is shell) and MathJax's sources left out
    c.querySelectorAll('pre, code, script, .MathJax, .MathJax_Display, .MathJax_Preview').forEach(x => x.remove());
    return c.textContent;
  }).join('\\n');
  const code = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea')].map(e => e.textContent).join('\\n');
  return {
    images: imgs.length,
    rendered: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    math: document.querySelectorAll('span.MathJax').length,
    math_sources: document.querySelectorAll('script[type^="math/tex"]').length,
    math_errors: document.querySelectorAll('.MathJax .merror, .MathJax_Error, span.noError').length,
    markdown_text: md,
    code_text: code,
    body_text: document.body.innerText,
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    folded: document.querySelectorAll('details.mm-fold').length,
    prev: !!document.querySelector('nav .mm-prev a'), next: !!document.querySelector('nav .mm-next a'),
  };
}"""


def _stored_pictures(nb) -> int:
    return sum(any(t in o.get("data", {}) for t in IMAGE_TYPES) for c in nb.cells for o in c.get("outputs", []))


def _expected(solutions: bool) -> dict[str, dict]:
    """Per notebook page: pictures it stores (in this edition) and the solution lines the public one must hide."""
    want = {}
    for path in default_notebooks():
        nb = nbformat.read(path, as_version=4)
        shown = nb if solutions else student_notebook(nb, str(path))
        public_text = json.dumps([c.source for c in shown.cells])
        secret = [] if solutions else [s for s in solution_lines(nb, str(path))
                                       if len(s) >= 8 and json.dumps(s)[1:-1] not in public_text]
        want[f"{path.stem}.html"] = {"pictures": _stored_pictures(shown), "secret": secret,
                                     "solution_cells": sum(len(e.solution_cells) for e in find_exercises(nb))}
    return want


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    reason = chromium_skip_reason()
    if reason:
        pytest.skip(reason)
    notebooks, readme, instructors = default_inputs()
    built = {}
    for edition, solutions in (("public", False), ("instructor", True)):
        out = tmp_path_factory.mktemp("site") / edition
        built[edition] = build_site(out, notebooks, readme, instructors, solutions=solutions)
        b = built[edition]
        print(f"\n{edition} edition: {len(b.pages)} pages, {b.bytes / 1e6:.1f} MB, built in {b.seconds:.1f} s")
    return built


def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _link_problems(page: str, links: list[str], site: Path, ids_of) -> list[str]:
    bad = []
    for href in links:
        parsed = urlparse(href)
        if parsed.scheme in ("http", "https", "mailto"):
            continue  # a link out (a paper, a project page) is not loaded by the page; it is not followed here
        target = unquote(urlparse(urljoin(f"http://x/{page}", href)).path).lstrip("/") or "index.html"
        if not (site / target).is_file():
            bad.append(f"{href} (no file {target})")
        elif parsed.fragment and not {parsed.fragment, unquote(parsed.fragment)} & ids_of(target):
            bad.append(f"{href} (no id {unquote(parsed.fragment)!r} in {target})")
    return bad


@pytest.mark.parametrize("edition", ["public", "instructor"])
def test_every_page_in_chromium(sites, browser, edition):
    from playwright.sync_api import Error as PlaywrightError
    built = sites[edition]
    site = built.out
    want = _expected(solutions=edition == "instructor")
    server, base = _serve(site)
    ids_cache = {}

    def ids_of(name):
        if name not in ids_cache:
            found = re.findall(r'\bid="([^"]+)"', (site / name).read_text(encoding="utf-8"))
            ids_cache[name] = {html.unescape(i) for i in found}
        return ids_cache[name]

    SHOTS.mkdir(parents=True, exist_ok=True)
    rows, problems = [], []
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        for k, page_info in enumerate(built.pages):
            name = page_info.name
            failed, outside, errors = {}, [], []  # failed: url -> why (a 404 also fails the request: once)
            page = ctx.new_page()
            page.on("requestfailed", lambda r: failed.setdefault(r.url, r.failure))
            page.on("response", lambda r: r.status >= 400 and failed.setdefault(r.url, f"HTTP {r.status}"))
            page.on("request", lambda r: r.url.startswith(("http:", "https:")) and not r.url.startswith(base)
                    and outside.append(r.url))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            try:  # generous limits: a busy 2-core machine typesets a page of formulas in seconds, not ms
                page.goto(base + name, wait_until="load", timeout=120_000)
                page.wait_for_selector("body[data-math=done]", state="attached", timeout=120_000)
                page.evaluate("() => document.fonts.ready.then(() => true)")  # MathJax's web fonts in
                info = page.evaluate(PAGE_JS)
            except PlaywrightError as e:
                problems.append(f"{edition}/{name}: did not finish loading ({str(e).splitlines()[0]})")
                page.close()
                continue
            seconds = time.perf_counter() - t0
            stored = want[name]["pictures"] if name in want else page_info.pictures
            if name in SHOT_PAGES:  # a few, to look at: each costs a second on a busy machine
                page.screenshot(path=str(SHOTS / f"{edition}_{name.replace('.html', '.png')}"), full_page=False)
            page.close()

            mine = []
            if info["rendered"] != stored or info["images"] != stored:
                mine.append(f"{info['rendered']} of {info['images']} pictures rendered, {stored} stored")
            if failed:
                mine.append(f"failed requests: {list(failed.items())[:3]}")
            if outside:
                mine.append(f"requests to other hosts: {outside[:3]}")
            if errors:
                mine.append(f"console errors: {errors[:3]}")
            if info["math"] != info["math_sources"] or info["math_errors"]:
                mine.append(f"{info['math']} formulas typeset of {info['math_sources']}, {info['math_errors']} errors")
            raw = RAW_MATH.findall(info["markdown_text"])
            if raw:
                mine.append(f"raw TeX in the prose: {raw[:3]}")
            mine += [f"broken link {b}" for b in _link_problems(name, info["links"], site, ids_of)]
            if k > 0 and not info["prev"] or k + 1 < len(built.pages) and not info["next"]:
                mine.append("no previous/next link")
            if edition == "public" and name in want:
                if BEGIN in info["code_text"] or "BEGIN SOLUTION" in info["code_text"]:
                    mine.append("a solution marker is shown")
                leaked = [s for s in want[name]["secret"] if s in info["body_text"] or s in info["code_text"]]
                if leaked:
                    mine.append(f"solution lines shown: {leaked[:3]}")
            if edition == "instructor" and name in want and info["folded"] < want[name]["solution_cells"]:
                mine.append(f"{info['folded']} cells folded under a click, {want[name]['solution_cells']} solutions")
            rows.append((name, info["rendered"], stored, info["math"], len(failed) + len(outside), len(errors),
                         len(info["links"]), f"{seconds:.1f}"))
            problems += [f"{edition}/{name}: {m}" for m in mine]
    finally:
        ctx.close()
        server.shutdown()
    print(f"\n{edition} edition ({len(rows)} pages, {built.bytes / 1e6:.1f} MB, built in {built.seconds:.1f} s):")
    head = ("page", "images rendered", "stored", "math", "failed requests", "console errors", "links", "load s")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    assert not problems, "\n".join(problems)
