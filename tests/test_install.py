"""The course data reaches an installed package: build the wheel, install it into a fresh environment
(the host's site-packages give torch and the rest, the checkout is not on the path), and from a folder
outside the checkout use the data the way notebooks 09 and 10 do, then run notebook 09 itself."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["minimistral", "data", "pyproject.toml", "README.md", "LICENSE"]  # what building a wheel reads

USE_THE_DATA = r"""
import json, sys, torch, minimistral as mm
from minimistral import paths
from minimistral.train import corpus
where = {"package": mm.__file__, "data": str(paths.data_dir())}
tok, train_ids, heldout_ids = corpus.load_data()
model, tok2 = corpus.load_tiny_model()
assert model.args == mm.ModelArgs.course(), model.args
ids = tok.encode("In the beginning", bos=True)
new = mm.generate(model, ids, max_new_tokens=8)
print(json.dumps({**where, "train_tokens": train_ids.numel(), "vocab": tok.vocab_size, "text": tok.decode(new)}))
"""

RUN_NOTEBOOK = r"""
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], 4)
nb.cells.insert(0, nbformat.v4.new_code_cell("import minimistral; print(minimistral.__file__)"))
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()  # raises on a failing cell
nbformat.write(nb, sys.argv[1])
"""


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd[:4]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_wheel_carries_the_data_and_notebook_09_runs_from_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy, so building leaves nothing (build/, *.egg-info) in the checkout
    src.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # offline with the host's setuptools when it has one; otherwise pip fetches it into an isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path / "dist"), str(src)])
    wheel = next((tmp_path / "dist").glob("minimistral-*.whl"))

    env_dir = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINIMISTRAL_DATA")}
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", str(wheel)],
        env=env)

    work = tmp_path / "elsewhere"  # outside the checkout: nothing found relative to the working folder
    work.mkdir()
    got = json.loads(run([python, "-c", USE_THE_DATA], cwd=work, env=env).strip().splitlines()[-1])
    installed = env_dir.resolve()
    assert Path(got["package"]).resolve().is_relative_to(installed), f"imported {got['package']}, not the wheel"
    assert Path(got["data"]).resolve().is_relative_to(installed), f"data from {got['data']}, not the wheel"
    assert got["vocab"] == 4096 and got["train_tokens"] > 900_000 and got["text"]

    notebook = work / "09_generation.ipynb"
    shutil.copy2(ROOT / "notebooks" / notebook.name, notebook)
    run([python, "-c", RUN_NOTEBOOK, str(notebook)], cwd=work, env=env)
    cells = nbformat.read(notebook, 4).cells  # nbformat joins the text a stored notebook splits into lines
    outputs = [o.get("text", "") for c in cells for o in c.get("outputs", [])]
    assert Path(outputs[0].strip()).resolve().is_relative_to(installed), f"the kernel imported {outputs[0]}"
    assert any("loaded the trained model from data/tiny_mistral" in t for t in outputs)  # not the random fallback
