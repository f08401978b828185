"""Notebook 11's settings and plan cells, run as they stand in the notebook, on a simulated Windows laptop and a
simulated Mac: no os.sysconf, no /proc, another sys.platform, psutil's answer for that system; on the Mac, MPS
available and Metal's limit. The cells must reach a valid plan for the real 7B (its config.json, no weights)
through the same functions the notebook calls, and the plan must be the one those figures call for."""

import builtins
import collections
import json
import os
import sys
from pathlib import Path

import jupytext
import matplotlib
import psutil
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  the notebook's imports, made before a platform is simulated (matplotlib
import tqdm.auto  # noqa: E402,F401           looks for fonts where the platform says they are)

import minimistral as mm
from minimistral import device as dev, planner

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "11_real_mistral_7b.py"
GiB = 2**30
_Memory = collections.namedtuple("svmem", "total available percent used free")  # the fields psutil gives everywhere


def plan_cells() -> list[str]:
    """The notebook's code cells from the imports to the one that unpacks the plan, in order."""
    cells = [c.source for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    last = next(i for i, src in enumerate(cells) if "DTYPE, QUANTIZE, GROUP_SIZE = PLAN" in src)
    return cells[: last + 1]


@pytest.fixture
def seven_b_folder(tmp_path, monkeypatch):
    folder = tmp_path / "Mistral-7B-v0.1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(mm.ModelArgs.mistral_7b().to_hf_config()))
    for var in (planner.CHECKPOINT_ENV, dev.DEVICE_ENV, planner.QUANTIZE_ENV, "CI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(planner.CHECKPOINT_ENV, str(folder))
    return folder


def simulate_platform(monkeypatch, platform: str, total: int, available: int):
    """No os.sysconf and no /proc (neither exists on Windows; macOS has no /proc), sys.platform set, and
    psutil answering as it would there. Records every call psutil gets."""
    calls = []

    def virtual_memory():
        calls.append("virtual_memory")
        return _Memory(total, available, 100 * (1 - available / total), total - available, available)

    real_open = builtins.open

    def no_proc_open(file, *a, **k):
        if str(file).startswith("/proc"):
            raise FileNotFoundError(f"[simulated {platform}] no such file: {file}")
        return real_open(file, *a, **k)

    monkeypatch.setattr(psutil, "virtual_memory", virtual_memory)
    monkeypatch.delattr(os, "sysconf", raising=False)
    monkeypatch.setattr(builtins, "open", no_proc_open)
    monkeypatch.setattr(sys, "platform", platform)
    return calls


def run_plan_cells(monkeypatch) -> dict:
    ns = {"__name__": "__notebook11__"}
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the small-model path's; not this test's business
    for src in plan_cells():
        exec(compile(src, str(NOTEBOOK), "exec"), ns)
    return ns


def test_the_simulation_catches_a_proc_or_sysconf_reader(monkeypatch):
    """The simulation is real: reading /proc/meminfo or calling os.sysconf fails inside it."""
    simulate_platform(monkeypatch, "win32", 16 * GiB, 10 * GiB)
    with pytest.raises(FileNotFoundError):
        open("/proc/meminfo")
    with pytest.raises(AttributeError):
        os.sysconf("SC_PAGE_SIZE")


def test_windows_laptop_reaches_a_plan(monkeypatch, seven_b_folder):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    calls = simulate_platform(monkeypatch, "win32", 16 * GiB, 10 * GiB)
    ns = run_plan_cells(monkeypatch)
    assert calls, "the plan read host memory through psutil"
    assert ns["REAL"] and ns["DEVICE"] == torch.device("cpu") and ns["FOLDER"] == seven_b_folder
    plan = ns["PLAN"]
    assert plan.free == 10 * GiB and plan.fits
    assert (plan.dtype, plan.quantize) == (torch.bfloat16, "int8"), plan.describe()
    assert plan == dev.recommend(ns["args"], "cpu", free=10 * GiB, working=ns["SMALLEST"])
    run_fits(ns)


def run_fits(ns):
    """The plan of the run (the setting with the long prompt's chunk) fits, and that chunk is the largest that does."""
    args, plan, chunk, run = ns["args"], ns["PLAN"], ns["CHUNK"], ns["RUN"]
    assert run == planner.run_plan(args, plan, chunk) and run.fits, run.describe()
    assert (run.dtype, run.quantize, run.group_size, run.mapped) == (plan.dtype, plan.quantize, plan.group_size,
                                                                       plan.mapped)
    larger = [c for c in planner.picture_chunks(args) if c > chunk]
    assert not any(planner.run_plan(args, plan, c).fits for c in larger), (chunk, run.describe())


def test_windows_with_a_forced_setting_and_a_cell_device(monkeypatch, seven_b_folder):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    simulate_platform(monkeypatch, "win32", 32 * GiB, 20 * GiB)
    monkeypatch.setenv(planner.QUANTIZE_ENV, "int4:128")
    plan = run_plan_cells(monkeypatch)["PLAN"]
    assert (plan.dtype, plan.quantize, plan.group_size) == (torch.bfloat16, "int4", 128)


@pytest.mark.parametrize("available,metal,expected,bound", [
    (6 * GiB, int(10.7 * GiB), "int4", "available"),   # a 16 GB Mac with a browser and an IDE open
    (14 * GiB, int(10.7 * GiB), "int8", "metal"),      # the same Mac with little else running
    (26 * GiB, int(21.3 * GiB), None, "metal"),        # a 32 GB Mac: bf16
])
def test_mac_counts_other_apps_and_the_mapped_file(monkeypatch, seven_b_folder, available, metal, expected, bound):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: metal)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 0)
    monkeypatch.setattr(dev, "mps_has_bf16", lambda: True)  # macOS 14+
    calls = simulate_platform(monkeypatch, "darwin", 2 * metal, available)
    ns = run_plan_cells(monkeypatch)
    plan = ns["PLAN"]
    assert ns["DEVICE"] == torch.device("mps") and calls
    assert plan.free == min(available, metal) and plan.fits
    assert plan.quantize == expected and plan.dtype == torch.bfloat16, plan.describe()
    assert plan.mapped == dev.mapped_bytes(ns["args"]) == 32000 * 4096 * 2  # the embedding's mapped pages
    what = dev.free_memory("mps")[1]
    assert ("other apps" in what) == (bound == "available"), what
    run_fits(ns)  # the mapped pages counted: the 6 GiB Mac's int4 runs with a chunk its memory holds


def test_cell_settings_and_their_overrides(monkeypatch, seven_b_folder):
    """The cell's DEVICE is used; its environment variable wins over it, and a bad one is named."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    simulate_platform(monkeypatch, "win32", 16 * GiB, 10 * GiB)
    cells = plan_cells()
    i = next(i for i, src in enumerate(cells) if src.lstrip().startswith("CHECKPOINT = "))
    cells[i] = cells[i].replace('DEVICE = ""', 'DEVICE = "cuda"')
    monkeypatch.setattr(sys.modules[__name__], "plan_cells", lambda: cells)
    with pytest.raises(ValueError, match=r"DEVICE='cuda', but PyTorch sees no CUDA device"):
        run_plan_cells(monkeypatch)
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")  # overrides the cell
    assert run_plan_cells(monkeypatch)["SETTINGS"].sources["device"] == dev.DEVICE_ENV
    monkeypatch.setenv(dev.DEVICE_ENV, "CPU")
    with pytest.raises(ValueError, match=r"MINIMISTRAL_DEVICE='CPU' is not a device.*lower case: 'cpu'"):
        run_plan_cells(monkeypatch)


def test_download_cell_is_off_and_refuses_ci(monkeypatch, seven_b_folder):
    """DOWNLOAD is False as shipped; set True in a CI run it refuses before importing anything; the call it
    would make is one huggingface_hub.snapshot_download accepts."""
    cells = [c.source for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    settings = next(src for src in cells if src.lstrip().startswith("CHECKPOINT = "))
    download = next(src for src in cells if src.lstrip().startswith("if DOWNLOAD:"))
    assert "DOWNLOAD = False" in settings
    ns = {"os": os, "planner": planner}
    exec(settings, ns)
    exec(download, ns)  # does nothing
    ns["DOWNLOAD"] = True
    monkeypatch.setenv("CI", "1")
    with pytest.raises(RuntimeError, match="DOWNLOAD = True in a CI or offline run"):
        exec(download, ns)
    hub = pytest.importorskip("huggingface_hub")
    import inspect
    params = inspect.signature(hub.snapshot_download).parameters
    assert {"repo_id", "allow_patterns", "local_dir"} <= set(params)
    assert "snapshot_download(\"mistralai/Mistral-7B-v0.1\", allow_patterns=" in download
