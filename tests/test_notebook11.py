"""Notebook 11's instructions agree with the tools: the download command with the installed `hf` CLI, the
hardware table with the memory planner."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import minimistral as mm
from minimistral import device as dev, planner

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "11_real_mistral_7b.py"


def shell_lines(prefix: str) -> list[str]:
    """The notebook's shell commands starting with `prefix` (markdown code blocks, '# ' stripped, '\\' joined)."""
    text = NOTEBOOK.read_text()
    lines = [line[2:] if line.startswith("# ") else line for line in text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip().startswith(prefix)]


def test_no_removed_cli_in_the_notebook():
    assert "huggingface-cli" not in NOTEBOOK.read_text()  # removed in huggingface_hub 1.0


def test_download_command_parses_with_the_installed_cli():
    pytest.importorskip("typer")
    download = pytest.importorskip("huggingface_hub.cli.download").download
    import typer
    import typer.main

    app = typer.Typer()
    app.command()(download)
    cli = typer.main.get_command(app)
    commands = shell_lines("hf download ")
    assert commands, "the notebook shows no `hf download` command"
    for command in commands:
        words = shlex.split(command)[2:]
        params = cli.make_context("download", words).params  # raises on an unknown flag or a stray argument
        assert params["repo_id"] == "mistralai/Mistral-7B-v0.1"
        assert sorted(params["include"]) == ["*.json", "*.safetensors"]  # one --include per pattern, both kept
        assert params["local_dir"] and not params["filenames"]


@pytest.mark.skipif(shutil.which("hf") is None, reason="the hf CLI is not installed")
def test_flags_and_commands_are_in_the_cli_help():
    help_text = subprocess.run(["hf", "download", "--help"], capture_output=True, text=True, timeout=120).stdout
    for command in shell_lines("hf download "):
        for flag in re.findall(r"(--[a-z-]+)", command):
            assert flag in help_text, f"{flag} is not an option of the installed `hf download`"
    login = subprocess.run(["hf", "auth", "login", "--help"], capture_output=True, text=True, timeout=120)
    assert login.returncode == 0 and "token" in login.stdout.lower()
    assert shell_lines("hf auth login")


def test_hardware_table_is_the_planners():
    """Each row of the markdown table: the setting, the plan that picked it, the plan of the run with the chunk the
    planner gives (which fits), and that chunk."""
    rows = [line for line in NOTEBOOK.read_text().splitlines() if line.startswith("# | ") and " GB | " in line]
    table = {c.name: p for c, p in planner.plan_table(mm.ModelArgs.mistral_7b())}
    assert len(rows) == len(table) == 8
    for (name, p), row in zip(table.items(), rows):
        cells = [c.strip() for c in row[2:].strip("|").split("|")]
        assert cells[1].startswith(f"{planner.DEVICE_CLASSES[list(table).index(name)].free / 1e9:.1f} GB"), (row, name)
        expected = {torch.bfloat16: "bf16", torch.float16: "fp16"}[p.dtype]
        assert cells[2].startswith(expected), (row, p.setting())
        q = {None: "", "int8": "int8", "int4": f"int4 groups of {p.group_size}"}[p.quantize]
        assert q in cells[2] and (p.quantize is not None or "int" not in cells[2]), (row, p.setting())
        assert cells[3] == f"{p.total / 1e9:.1f} GB", (row, p.describe())
        chunk = planner.picture_chunk(mm.ModelArgs.mistral_7b(), p)
        run = planner.run_plan(mm.ModelArgs.mistral_7b(), p, chunk)
        assert run.fits and run.total >= p.total, run.describe()
        assert cells[4] == f"{run.total / 1e9:.1f} GB", (row, run.describe())
        assert f"chunks of {chunk:,}" in cells[5], (row, chunk)
