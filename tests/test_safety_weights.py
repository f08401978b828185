"""Issue 18, checkpoints: saves are atomic (a failure at any point leaves the folder byte-identical), and
the loader refuses, by name, what it cannot run (integer/float8/complex tensors, non-float dtypes, config
features the model lacks, NaN weights, malformed .pth and index files, too little host memory, a CUDA
device that is not there)."""

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import minimistral as mm
from minimistral import validate, weights
from minimistral.storage import checkpoints
from minimistral.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def args(**kw):
    base = dict(dim=32, n_layers=2, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2, vocab_size=97,
                sliding_window=8, max_seq_len=64, dtype="float32")
    base.update(kw)
    return mm.ModelArgs(**base)


def model(seed=0, **kw):
    return mm.Transformer(args(**kw)).init_weights("normal", std=0.1, seed=seed).eval()


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder`, with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def saved(tmp_path):
    """A folder holding a checkpoint and a file of the user's, and its snapshot."""
    path = tmp_path / "ckpt"
    mm.save_checkpoint(model(seed=1), path, max_shard_size=20000, progress=False)  # sharded: index + shards
    (path / "NOTES.md").write_text("my notes")
    return path, snapshot(path)


def hand_edited(path: Path):
    """A folder whose files a test changed by hand: without the save's manifest (which would refuse them as
    not of that save), the loader's own checks on each file are what the test sees."""
    (path / weights.MANIFEST).unlink(missing_ok=True)


def load(path, **kw):
    return mm.load_checkpoint(path, progress=False, **kw)


# ---- atomic saves ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, exc, culprit", [
    (dict(dtype=torch.int8), ValueError, "torch.int8"),
    (dict(dtype="int8"), ValueError, "'int8'"),
    (dict(dtype=torch.complex64), ValueError, "complex64"),
    (dict(dtype=torch.float8_e4m3fn), ValueError, "float8_e4m3fn"),
    (dict(format="gguf"), ValueError, "gguf"),
])
def test_failed_overwrite_leaves_the_old_checkpoint_byte_identical(saved, bad, exc, culprit):
    path, before = saved
    kw = dict(overwrite=True, progress=False)
    kw.update(bad)
    with pytest.raises(exc) as info:
        mm.save_checkpoint(model(seed=2), path, **kw)
    assert culprit in str(info.value)
    assert snapshot(path) == before


def test_meta_device_model_is_refused_before_writing(saved):
    path, before = saved
    with torch.device("meta"):
        meta = mm.Transformer(args())
    with pytest.raises(ValueError, match="meta device") as info:
        mm.save_checkpoint(meta, path, overwrite=True, progress=False)
    assert "tok_embeddings.weight" in str(info.value)
    assert snapshot(path) == before


@pytest.mark.parametrize("fail_at", [1, 2])  # the first shard, or the second after the first was complete
def test_disk_full_mid_write_leaves_the_old_checkpoint(saved, monkeypatch, fail_at):
    """A full disk simulated by a write that stops part-way with ENOSPC."""
    path, before = saved
    real, calls = checkpoints._write_safetensors, []

    def full_disk(file, *a, **k):
        calls.append(file)
        if len(calls) == fail_at:
            file.write_bytes(b"\0" * 1000)  # part of the file made it
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(checkpoints, "_write_safetensors", full_disk)
    with pytest.raises(OSError, match="No space left"):
        mm.save_checkpoint(model(seed=2), path, overwrite=True, max_shard_size=20000, progress=False)
    assert snapshot(path) == before  # no partial file, no staging folder, old shards and index intact
    assert load(path).args == args()


def test_ctrl_c_mid_write_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    real = checkpoints._write_safetensors

    def interrupted(file, *a, **k):
        file.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "_write_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mm.save_checkpoint(model(), tmp_path / "a" / "b", progress=False)
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too
    monkeypatch.setattr(checkpoints, "_write_safetensors", real)


def test_not_enough_disk_is_refused_up_front(saved, monkeypatch):
    path, before = saved
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    with pytest.raises(OSError, match="saving needs .* MB free") as info:
        mm.save_checkpoint(model(seed=2), path, overwrite=True, progress=False)
    assert str(path) in str(info.value) and info.value.errno == errno.ENOSPC
    assert snapshot(path) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 KiB filesystem (tmpfs, needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", f"tmpfs-{uuid.uuid4().hex[:8]}", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_real_full_filesystem_leaves_the_old_checkpoint(small_tmpfs, monkeypatch):
    """On a real 256 KiB filesystem: a ~100 KB checkpoint fits, a second one of ~200 KB does not. With the
    up-front space check the save is refused; without it (a disk filled by someone else meanwhile) the
    write itself fails with ENOSPC. Either way the first checkpoint is intact."""
    path = small_tmpfs / "ckpt"
    small = model(seed=1)  # 97 x 32 embeddings ... ~100 KB in float32
    mm.save_checkpoint(small, path, progress=False)
    before = snapshot(path)
    bigger = model(seed=2, vocab_size=400)  # ~200 KB: old + new do not fit in 256 KiB
    with pytest.raises(OSError, match="saving needs"):
        mm.save_checkpoint(bigger, path, overwrite=True, progress=False)
    assert snapshot(path) == before
    monkeypatch.setattr(checkpoints, "_check_disk_space", lambda *a: None)
    with pytest.raises(OSError) as info:
        mm.save_checkpoint(bigger, path, overwrite=True, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert snapshot(path) == before
    torch.testing.assert_close(load(path).output.weight, small.output.weight)


def test_overwrite_never_deletes_before_the_new_checkpoint_is_complete(saved, monkeypatch):
    """Watch the folder at the moment the new weights are complete: the old checkpoint is still all there."""
    path, before = saved
    seen = {}
    real = checkpoints._swap_in

    def spy(stage, target):
        seen.update(snapshot(target))
        return real(stage, target)

    monkeypatch.setattr(checkpoints, "_swap_in", spy)
    mm.save_checkpoint(model(seed=2), path, format="consolidated", overwrite=True, progress=False)
    assert {k: v for k, v in seen.items() if not k.startswith((".saving-", ".minimistral.lock"))} == before
    # after the swap: the new checkpoint, the user's file, nothing stale, no staging folder, no lock
    assert sorted(p.name for p in path.iterdir()) == ["NOTES.md", "consolidated.safetensors",
                                                      "minimistral.manifest.json", "params.json"]
    assert (path / "NOTES.md").read_text() == "my notes"


def test_int8_save_is_refused_instead_of_writing_zeros(tmp_path):
    with pytest.raises(ValueError, match="int8") as info:
        mm.save_checkpoint(model(), tmp_path, dtype=torch.int8, progress=False)
    assert "floating-point" in str(info.value)
    with pytest.raises(ValueError, match="int8"):
        mm.write_random_checkpoint(args(), tmp_path, dtype=torch.int8, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_tied_embedding_and_output_are_both_written(tmp_path):
    m = model()
    m.output.weight = m.tok_embeddings.weight  # tied: named_parameters() lists it once
    mm.save_checkpoint(m, tmp_path, progress=False)
    back = load(tmp_path)
    torch.testing.assert_close(back.output.weight, m.tok_embeddings.weight)
    tokens = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), m(tokens))


def test_nan_weights_are_not_saved(saved):
    path, before = saved
    m = model(seed=2)
    with torch.no_grad():
        m.layers[1].feed_forward.w2.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="layers.1.feed_forward.w2.weight") as info:
        mm.save_checkpoint(m, path, overwrite=True, progress=False)
    assert "1 NaN" in str(info.value) and "[3, 4]" in str(info.value)
    assert snapshot(path) == before


def test_values_that_overflow_the_save_dtype_are_refused(tmp_path):
    m = model()
    with torch.no_grad():
        m.norm.weight[0] = 1e6  # fine in float32, inf in float16
    with pytest.raises(ValueError, match=r"'norm.weight' holds 0 NaN and 1 infinite.*float16"):
        mm.save_checkpoint(m, tmp_path, dtype=torch.float16, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_extra_or_missing_weights_is_refused(tmp_path):
    m = model()
    m.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        mm.save_checkpoint(m, tmp_path, progress=False)
    with pytest.raises(TypeError, match="Linear"):
        mm.save_checkpoint(torch.nn.Linear(2, 2), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_save_below_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        mm.save_checkpoint(model(), tmp_path / "f" / "ckpt", progress=False)


# ---- the loader: dtypes ------------------------------------------------------------------------------------

@pytest.fixture
def consolidated(tmp_path):
    path = tmp_path / "c"
    mm.save_checkpoint(model(), path, format="consolidated", progress=False)
    return path


def rewrite(path: Path, name: str, fn):
    """Replace one tensor of consolidated.safetensors by fn(tensor)."""
    file = path / "consolidated.safetensors"
    sd = load_file(file)
    sd[name] = fn(sd[name])
    save_file(sd, file, metadata={"format": "pt"})
    hand_edited(path)


@pytest.mark.parametrize("convert, shown", [
    (lambda t: (t * 100).to(torch.int8), "I8"),
    (lambda t: t.to(torch.int32), "I32"),
    (lambda t: t > 0, "BOOL"),
    (lambda t: t.to(torch.float8_e4m3fn), "F8_E4M3"),
    (lambda t: t.to(torch.uint8), "U8"),
])
def test_non_float_tensors_in_a_file_are_refused_by_name(consolidated, convert, shown):
    rewrite(consolidated, "layers.0.attention.wk.weight", convert)
    before = snapshot(consolidated)
    with pytest.raises(CheckpointError) as info:
        load(consolidated)
    msg = str(info.value)
    assert "consolidated.safetensors" in msg and "'layers.0.attention.wk.weight'" in msg and shown in msg
    assert "floating-point weights only" in msg
    assert snapshot(consolidated) == before


def test_complex_tensors_are_refused(consolidated):
    try:
        rewrite(consolidated, "norm.weight", lambda t: t.to(torch.complex64))
    except Exception as e:  # this safetensors cannot even store complex tensors
        pytest.skip(f"safetensors cannot write complex64: {e}")
    with pytest.raises(CheckpointError, match=r"'norm.weight' has dtype C64"):
        load(consolidated)


@pytest.mark.parametrize("dtype", [torch.int8, "int8", "int4", torch.bool, torch.complex64, torch.float8_e5m2,
                                   torch.int64])
def test_load_dtype_must_be_floating(consolidated, dtype):
    with pytest.raises(ValueError) as info:
        load(consolidated, dtype=dtype)
    assert repr(dtype) in str(info.value) and "floating-point dtype" in str(info.value)


# ---- the loader: config features and sizes -----------------------------------------------------------------

def edit_config(path: Path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))
    hand_edited(path)


@pytest.fixture
def hf(tmp_path):
    path = tmp_path / "hf"
    mm.save_checkpoint(model(), path, progress=False)
    return path


@pytest.mark.parametrize("changes, culprit", [
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_type='yarn'"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "gptq"),
    (dict(hidden_size=32.5), "hidden_size must be a whole number, got 32.5"),
    (dict(num_hidden_layers="2"), "num_hidden_layers must be a whole number, got '2'"),
    (dict(intermediate_size=True), "intermediate_size must be a whole number, got True"),
    (dict(sliding_window="8"), "sliding_window must be a whole number"),
    (dict(rms_norm_eps="1e-5"), "rms_norm_eps must be a finite number"),
    (dict(vocab_size=None), "vocab_size is null"),
])
def test_unsupported_or_malformed_hf_config_is_refused_by_name(hf, changes, culprit):
    edit_config(hf, **changes)
    before = snapshot(hf)
    with pytest.raises(CheckpointError) as info:
        load(hf)
    assert culprit in str(info.value) and "config.json" in str(info.value)
    assert snapshot(hf) == before


def test_integral_float_sizes_and_silu_spelled_swish_still_load(hf):
    edit_config(hf, hidden_size=32.0, hidden_act="swish")
    assert load(hf).args == args()


@pytest.mark.parametrize("key", ["dim", "n_layers", "n_heads", "hidden_dim", "norm_eps", "vocab_size", "rope_theta"])
def test_params_json_nulls_are_refused_naming_the_key(consolidated, key):
    params = json.loads((consolidated / "params.json").read_text())
    params[key] = None
    (consolidated / "params.json").write_text(json.dumps(params))
    hand_edited(consolidated)
    with pytest.raises(CheckpointError) as info:
        load(consolidated)
    assert f"{key} is null" in str(info.value) and "params.json" in str(info.value)


def test_params_json_optional_nulls_mean_absent(consolidated):
    params = json.loads((consolidated / "params.json").read_text())
    params.update(head_dim=None, n_kv_heads=2, sliding_window=None, max_seq_len=None)
    (consolidated / "params.json").write_text(json.dumps(params))
    hand_edited(consolidated)
    got = load(consolidated).args
    assert got.sliding_window is None and got.head_dim == 8 and got.max_seq_len == 32768


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "42"])
def test_config_that_is_not_an_object_is_refused(hf, body):
    (hf / "config.json").write_text(body)
    hand_edited(hf)
    with pytest.raises(CheckpointError, match="config.json: holds a JSON"):
        load(hf)


def test_layer_count_is_cross_checked_against_the_files(hf):
    edit_config(hf, num_hidden_layers=4)
    with pytest.raises(CheckpointError, match=r"the files hold 2 layers, config.json says n_layers=4"):
        load(hf)
    edit_config(hf, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"hold layer 1 but config.json says n_layers=1"):
        load(hf)


# ---- the loader: NaN weights, memory, device ---------------------------------------------------------------

def test_nan_weights_in_a_file_are_refused_naming_the_tensor(consolidated):
    def poison(t):
        t = t.clone()
        t[2, 1] = float("nan")
        t[0, 0] = float("inf")
        return t

    rewrite(consolidated, "layers.1.attention.wo.weight", poison)
    with pytest.raises(CheckpointError) as info:
        load(consolidated)
    msg = str(info.value)
    assert "'layers.1.attention.wo.weight'" in msg and "1 NaN and 1 infinite" in msg and "[0, 0]" in msg


def test_overflow_in_the_load_cast_is_refused(consolidated):
    rewrite(consolidated, "norm.weight", lambda t: t * 1e6)  # float32: fine; float16: inf
    assert load(consolidated).norm.weight.max() > 1e5
    with pytest.raises(CheckpointError, match="'norm.weight' .* after the cast to float16"):
        load(consolidated, dtype=torch.float16)


def test_host_memory_is_checked_on_cpu_loads(consolidated, monkeypatch):
    monkeypatch.setattr(validate, "host_memory_available", lambda: 1000)
    monkeypatch.setattr(mm.device, "host_available", lambda: 10**12)  # the planner reads the same; let it pass
    with pytest.raises(MemoryError, match=r"needs 0\.0 GB of host memory, 0\.0 GB available") as info:
        load(consolidated, dtype=torch.bfloat16)  # a cast: a new copy of every weight (~60 KB)
    assert "MemAvailable" in str(info.value)
    # in the file's own dtype the weights stay memory-mapped: nothing new to allocate, so it loads
    assert load(consolidated, dtype=None).args == args()


def test_7b_float32_load_of_bf16_files_needs_29_gb(monkeypatch):
    """The arithmetic behind the check, on the 7B's tensor list: a float32 load of bf16 files copies all."""
    a = mm.ModelArgs.mistral_7b()
    entries = [weights._Entry(n, n, Path("x"), tuple(p.shape), 0, torch.bfloat16)
               for n, p in weights.meta_model(a).named_parameters()]
    assert weights._host_bytes(entries, torch.float32, "consolidated") == a.weight_bytes("float32")  # 29.0 GB
    assert weights._host_bytes(entries, None, "consolidated") == 0  # memory-mapped
    monkeypatch.setattr(validate, "host_memory_available", lambda: 24 * 10**9)
    with pytest.raises(MemoryError, match=r"needs 29\.0 GB of host memory, 24\.0 GB available"):
        validate.check_host_memory(weights._host_bytes(entries, torch.float32, "consolidated"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_where_there_is_none(consolidated):
    with pytest.raises(RuntimeError, match=r"'cuda' was requested but CUDA is not available") as info:
        load(consolidated, device="cuda")
    assert "device='cpu'" in str(info.value)


def test_cuda_index_beyond_the_devices(consolidated, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"'cuda:3' was requested but this machine has 1 CUDA device"):
        load(consolidated, device="cuda:3")


@pytest.mark.parametrize("device", ["cpu:3", "cpu:1"])
def test_cpu_index_other_than_0_is_refused(consolidated, device):
    """PyTorch accepts torch.device("cpu:3") and computes on the one CPU device anyway: refused by name."""
    with pytest.raises(ValueError, match=rf"device '{device}': PyTorch has one CPU device, 'cpu'"):
        load(consolidated, device=device)
    from minimistral.validate import resolve_device
    assert resolve_device("cpu:0") == torch.device("cpu:0") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["gpu", 3.5, "cuda:x"])
def test_malformed_device_is_named(consolidated, device):
    with pytest.raises(ValueError, match="device must be"):
        load(consolidated, device=device)


# ---- the loader: malformed .pth and index files ------------------------------------------------------------

@pytest.fixture
def pth_folder(consolidated):
    sd = load_file(consolidated / "consolidated.safetensors")
    (consolidated / "consolidated.safetensors").unlink()
    hand_edited(consolidated)
    return consolidated, sd


@pytest.mark.parametrize("make, culprit", [
    (lambda sd: list(sd.values()), "holds a list, not a dict of tensors"),
    (lambda sd: {"model": sd, "optimizer": {}, "step": 10}, "wrapped in a dict under the key 'model'"),
    (lambda sd: {**sd, "step": 3}, "entry 'step' holds a int, not a tensor"),
    (lambda sd: {**sd, "output.weight": sd["output.weight"].to(torch.int8)}, "'output.weight' has dtype torch.int8"),
])
def test_malformed_pth_contents_raise_the_loaders_error(pth_folder, make, culprit):
    path, sd = pth_folder
    torch.save(make(sd), path / "consolidated.00.pth")
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert culprit in str(info.value) and "consolidated.00.pth" in str(info.value)


def test_legacy_non_zip_pth_is_named_with_the_fix(pth_folder):
    path, sd = pth_folder
    torch.save(sd, path / "consolidated.00.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"old \(pre-1.6\) torch.save format") as info:
        load(path)
    fix = str(info.value).split("Convert it once: ")[1]
    exec(fix, {"torch": torch})  # the advice given works
    torch.testing.assert_close(load(path).output.weight, sd["output.weight"])


@pytest.mark.parametrize("value", [5, None, ["model-00001-of-00002.safetensors"], {"f": 1}])
def test_index_values_that_are_not_file_names(tmp_path, value):
    path = tmp_path / "sharded"
    mm.save_checkpoint(model(), path, max_shard_size=20000, progress=False)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    key = sorted(index["weight_map"])[3]
    index["weight_map"][key] = value
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    hand_edited(path)
    with pytest.raises(CheckpointError) as info:
        load(path)
    assert f"weight_map[{key!r}]" in str(info.value) and "model.safetensors.index.json" in str(info.value)


def test_index_that_is_not_an_object(tmp_path):
    path = tmp_path / "sharded"
    mm.save_checkpoint(model(), path, max_shard_size=20000, progress=False)
    (path / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="index.json: holds a JSON list"):
        load(path)


def test_atomic_write_helpers_leave_the_old_file_on_failure(tmp_path):
    from minimistral.storage.atomic import atomic_open, atomic_write_text

    f = tmp_path / "log.json"
    atomic_write_text(f, "old")
    os.chmod(f, 0o640)
    with pytest.raises(RuntimeError):
        with atomic_open(f, "w") as out:
            out.write("new, half")
            raise RuntimeError("disk gone")
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["log.json"]
    atomic_write_text(f, "new")
    assert f.read_text() == "new" and (f.stat().st_mode & 0o777) == 0o640
