"""The explorers in a real JupyterLab, driven by headless Chromium (pytest -m browser tests/test_browser.py).

Starts JupyterLab on localhost with a token, opens notebooks that use minimistral.viz explorers, runs all
cells from the Run menu, moves a slider with the keyboard, and checks that the picture changed and that
no cell shows an error. Screenshots go to screenshots/ (git ignores it).

Needs Debian's chromium (`apt-get install -y chromium`) and the Python `playwright` package
(`pip install playwright`; no `playwright install`: Chromium comes from apt, not from a download).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import chromium_skip_reason

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "screenshots"
TOKEN = "minimistral-browser-test"

# The course notebooks with explorers, as stored (opened first, then re-run), and one notebook written here for
# the attention explorer, whose course notebook (11) is too heavy for this test.
COURSE_NOTEBOOKS = {"05_sliding_window.ipynb": "mask_explorer", "08_kv_cache.ipynb": "cache_explorer"}

SETUP = """import torch
import minimistral as mm
torch.manual_seed(0)
args = mm.ModelArgs.tiny(dim=64, n_layers=2, head_dim=16, hidden_dim=128, n_heads=8, n_kv_heads=2,
                         vocab_size=32000, sliding_window=6)
model = mm.Transformer(args).init_weights(std=0.3, seed=0).eval()
tok = mm.Tokenizer.mistral_v1()
ids = tok.encode("The cat sat on the mat and looked at the dog", bos=True)
print(len(ids), "tokens")"""

OWN_NOTEBOOKS = {
    "explore_attention.ipynb": [
        ("markdown", "# Attention explorer\nA tiny random Mistral; move the sliders."),
        ("code", SETUP),
        ("code", "mm.viz.attention_explorer(model, ids, tokenizer=tok)"),
    ],
}


def _write_notebook(path: Path, cells):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nbformat.write(nb, path)


def _notebooks(folder: Path) -> list[str]:
    """Copy the course notebooks with explorers and write our own; return their names."""
    course = ROOT / "notebooks"
    for name, explorer in COURSE_NOTEBOOKS.items():
        assert f"{explorer}(" in (course / name).read_text(), f"{name} no longer uses {explorer}: update this test"
        shutil.copy(course / name, folder / name)
    for name, cells in OWN_NOTEBOOKS.items():
        _write_notebook(folder / name, cells)
    return [*COURSE_NOTEBOOKS, *OWN_NOTEBOOKS]


def _stored_explorer_pictures(path: Path) -> int:
    """How many explorer cells of a saved notebook carry their first picture as a PNG fallback."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" and "explorer(" in c.source
               for o in c.get("outputs", []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = chromium_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    names = _notebooks(root)
    port = _free_port()
    home = tmp_path_factory.mktemp("jupyter_home")  # fresh settings: no news prompt, no saved layout
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               MPLBACKEND="module://matplotlib_inline.backend_inline", PYTHONPATH=str(ROOT))
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    log = open(home / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0", "--allow-root",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}: see {home / 'lab.log'}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"JupyterLab did not answer on {url} within a minute: see {home / 'lab.log'}")
        yield url, names, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _errors(page) -> list[str]:
    """Text of every error or stderr output and every widget that failed to draw."""
    found = []
    for node in page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
                             '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]').all():
        found.append(node.inner_text()[:500])
    body = page.locator(".jp-Notebook").inner_text()
    for marker in ("Traceback", "Error displaying widget"):
        if marker in body:
            found.append(f"notebook shows {marker!r}")
    return found


def _accept_kernel_dialog(page):
    """JupyterLab may ask which kernel to start: take the one it proposes (the notebook's python3)."""
    try:
        page.locator(".jp-Dialog .jp-mod-accept").wait_for(timeout=8_000)
    except Exception:
        return
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=10_000)


def _wait_idle(page):
    page.wait_for_timeout(700)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']:visible").first.wait_for(timeout=90_000)


_SRC = """el => { const img = el.querySelector('.widget-output img');
                 return img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null; }"""


def _settled_picture(page, box, tries=60):
    """The explorer's picture once the kernel is idle and it has stopped changing (drawn, not mid-update)."""
    last = None
    for _ in range(tries):
        _wait_idle(page)
        src = box.evaluate(_SRC)
        if src is not None and src == last:
            return src
        last = src
    return last


def _centre(page, box):
    box.evaluate("el => el.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(500)


def _shut_down_kernels(url):
    """Free the CPU for the next notebook."""
    auth = {"Authorization": f"token {TOKEN}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions", headers=auth)) as r:
        sessions = json.load(r)
    for s in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{s['id']}", method="DELETE", headers=auth))


def _run_all(page):
    page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
    page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()


@pytest.mark.parametrize("index", range(len(COURSE_NOTEBOOKS) + len(OWN_NOTEBOOKS)))
def test_explorer_notebook_runs_and_reacts(lab, browser, index):
    url, names, lab_root = lab
    name = names[index]
    SHOTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={TOKEN}&reset",  # one tab, fresh layout
                   wait_until="domcontentloaded", timeout=90_000)
        page.locator(".jp-Notebook .jp-Cell:visible").first.wait_for(timeout=90_000)
        _accept_kernel_dialog(page)
        _wait_idle(page)
        if _stored_explorer_pictures(lab_root / name):  # a saved course notebook: it opens showing them
            first = page.locator(".jp-OutputArea-output img").first
            first.wait_for(timeout=30_000)
            assert "Error displaying widget" not in page.locator(".jp-Notebook").inner_text()
            _centre(page, page.locator(".jp-CodeCell", has_text="explorer(").first)
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_opened.png"))
        _run_all(page)
        page.locator(".widget-output img").first.wait_for(timeout=60_000)
        n_code = page.locator(".jp-CodeCell").count()
        # every code cell has run, once, in a fresh kernel: no prompt shows [*] or [ ], and the highest execution
        # count is the number of code cells. (A cell whose solution is collapsed, as `labs tag` leaves it, shows
        # an empty prompt, so counting the numbered prompts would miss it.)
        page.wait_for_function(
            """n => { const t = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
                     const counts = t.map(s => /\\[(\\d+)\\]/.exec(s)).filter(m => m).map(m => +m[1]);
                     return !t.some(s => /\\[[ *]\\]/.test(s)) && Math.max(0, ...counts) === n; }""",
            arg=n_code, timeout=120_000)
        assert not _errors(page), _errors(page)

        explorers = page.locator(".jp-OutputArea-output .widget-vbox")  # each explorer: controls over a picture
        assert explorers.count() >= 1, "no explorer widget rendered"
        for i in range(explorers.count()):
            box = explorers.nth(i)
            _centre(page, box)
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_{i}_before.png"))
            before = box.evaluate(_SRC)  # null for a hand-made widget whose Output starts empty
            handle = box.locator(".widget-slider .noUi-handle").last  # head / window / tokens written
            handle.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            _wait_idle(page)  # each step redraws in the kernel; let the last one land
            after = _settled_picture(page, box)
            assert after not in (None, before), "the picture did not change after moving the slider"
            _centre(page, box)
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_{i}_after.png"))
        assert not _errors(page), _errors(page)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{Path(name).stem}_failure.png"))  # what the page showed
        raise
    finally:
        page.close()
        _shut_down_kernels(url)
