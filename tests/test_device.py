"""Device and dtype choice, the memory planner (minimistral/device.py), with availability and free memory
simulated."""

import pytest
import torch

import minimistral as mm
from minimistral import device as dev, planner
from minimistral.device import GB, check_dtype, choose_device, choose_dtype, plan, recommend

SEVEN_B = mm.ModelArgs.mistral_7b()


def simulate(monkeypatch, cuda=False, mps=False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv("MINIMISTRAL_DEVICE", raising=False)


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"),
                                               (True, False, "cuda")])
def test_choose_device_order(monkeypatch, cuda, mps, expected):
    simulate(monkeypatch, cuda, mps)
    assert choose_device().type == expected


def test_choose_device_override(monkeypatch):
    simulate(monkeypatch, cuda=True, mps=True)
    assert choose_device("cpu").type == "cpu"
    monkeypatch.setenv("MINIMISTRAL_DEVICE", "mps")
    assert choose_device().type == "mps"
    simulate(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ValueError, match=r"prefer='cuda', but PyTorch sees no CUDA device here: use 'cpu'"):
        choose_device("cuda")
    monkeypatch.setenv("MINIMISTRAL_DEVICE", "mps")
    with pytest.raises(ValueError, match="MINIMISTRAL_DEVICE='mps', but PyTorch sees no MPS device"):
        choose_device()
    with pytest.raises(ValueError, match="prefer='tpu' is not a device"):
        choose_device("tpu")


@pytest.mark.parametrize("value,why", [
    ("CPU", r"lower case: 'cpu'"), ("Cuda", r"lower case: 'cuda'"), ("cpu:3", "is not a device"),
    ("mps:1", "is not a device"), (" cuda", r"lower case: 'cuda'"), ("gpu", "is not a device"),
    ("cuda:-1", "is not a device"), ("cuda:4", r"has 2 CUDA device\(s\): use 'cuda:0' to 'cuda:1'"),
])
def test_bad_device_variable_is_named(monkeypatch, value, why):
    simulate(monkeypatch, cuda=True, mps=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("MINIMISTRAL_DEVICE", value)
    with pytest.raises(ValueError, match=rf"^MINIMISTRAL_DEVICE={value!r}.*{why}"):
        choose_device()
    monkeypatch.setenv("MINIMISTRAL_DEVICE", "cuda:1")
    assert choose_device() == torch.device("cuda:1")


@pytest.mark.parametrize("value", ["int4:abc", "int8:32", "int4:48", "int4:128.0", "fp8", "int4:", "8"])
def test_bad_quantize_variable_is_named(value):
    with pytest.raises(ValueError, match=rf"^MINIMISTRAL_QUANTIZE={value!r} is not a quantization setting"):
        planner.settings(environ={"MINIMISTRAL_QUANTIZE": value})


def test_settings_cell_and_environment(monkeypatch, tmp_path):
    simulate(monkeypatch, cuda=False, mps=False)
    s = planner.settings(environ={})
    assert (s.checkpoint, s.device, s.quantize) == (None, torch.device("cpu"), "auto")
    s = planner.settings(str(tmp_path), "cpu", "int4:64", environ={})
    assert (s.checkpoint, s.quantize, s.group_size) == (tmp_path, "int4", 64)
    assert s.sources == {"checkpoint": "CHECKPOINT", "device": "DEVICE", "quantize": "QUANTIZE"}
    s = planner.settings("", "", "int8", environ={"MINIMISTRAL_CHECKPOINT": str(tmp_path), "MINIMISTRAL_QUANTIZE": "none"})
    assert (s.checkpoint, s.quantize) == (tmp_path, None) and s.sources["quantize"] == "MINIMISTRAL_QUANTIZE"
    assert "set by MINIMISTRAL_QUANTIZE" in s.describe() and "set in the cell" not in s.describe()
    with pytest.raises(FileNotFoundError, match=r"^MINIMISTRAL_CHECKPOINT='.*nowhere': no such folder"):
        planner.settings(environ={"MINIMISTRAL_CHECKPOINT": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"^CHECKPOINT='.*nowhere': no such folder"):
        planner.settings(str(tmp_path / "nowhere"), environ={})
    with pytest.raises(ValueError, match=r"^DEVICE='mps', but PyTorch sees no MPS device"):
        planner.settings(device="mps", environ={})


def test_relative_checkpoint_is_read_from_the_notebook_folder_then_the_repository(monkeypatch, tmp_path):
    """Jupyter starts a kernel in the notebook's folder: `--local-dir models/X` typed in the repository's root is
    found there too, the describe() line says which folder was used, and a miss names every path tried."""
    simulate(monkeypatch, cuda=False, mps=False)
    repo, notebooks = tmp_path / "repo", tmp_path / "repo" / "notebooks"
    (repo / "models" / "M7").mkdir(parents=True)
    notebooks.mkdir()
    monkeypatch.setattr(planner, "repository_root", lambda: repo)
    monkeypatch.chdir(notebooks)
    s = planner.settings("models/M7", environ={})
    assert s.checkpoint == repo / "models" / "M7" and s.checkpoint.is_absolute()
    assert "found in the repository's root" in s.describe()
    (notebooks / "models" / "M7").mkdir(parents=True)  # the notebook's folder comes first
    s = planner.settings("", environ={"MINIMISTRAL_CHECKPOINT": "models/M7"})
    assert s.checkpoint == notebooks / "models" / "M7" and "the kernel's working folder" in s.describe()
    assert planner.settings(str(repo / "models" / "M7"), environ={}).found == ""  # absolute: nothing to say
    with pytest.raises(FileNotFoundError) as e:
        planner.settings("", environ={"MINIMISTRAL_CHECKPOINT": "models/Nowhere"})
    assert str(e.value).startswith("MINIMISTRAL_CHECKPOINT='models/Nowhere': no such folder")
    assert str(notebooks / "models" / "Nowhere") in str(e.value) and str(repo / "models" / "Nowhere") in str(e.value)
    assert "absolute path" in str(e.value)
    target, found = planner.resolve_checkpoint("models/New", must_exist=False)  # a download target: the repository's
    assert target == repo / "models" / "New" and not target.exists() and "placed under the repository's root" in found


def test_repository_root_is_this_checkout():
    root = planner.repository_root()
    assert root is not None and (root / "minimistral").is_dir() and (root / "notebooks").is_dir()


def test_host_memory_is_psutils(monkeypatch):
    """One reader, on every system: psutil's available memory, not /proc or os.sysconf."""
    import collections

    import psutil

    from minimistral import validate
    mem = collections.namedtuple("svmem", "total available")(16 * 2**30, 7 * 2**30 + 5)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: mem)
    assert validate.host_memory_available() == dev.host_available() == 7 * 2**30 + 5
    assert dev.free_memory("cpu") == (7 * 2**30 + 5, "of available RAM")
    with pytest.raises(MemoryError, match=r"needs 8\.0 GB of host memory, 7\.5 GB available"):
        validate.check_host_memory(8 * 10**9)


def test_mps_free_memory_is_the_smaller_of_ram_and_metal(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 11 * 10**9)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 10**9)
    monkeypatch.setattr(dev, "host_available", lambda: 6 * 10**9)
    free, what = dev.free_memory("mps")
    assert free == 6 * 10**9 and "other apps" in what and "Metal alone would allow 10.0 GB" in what
    monkeypatch.setattr(dev, "host_available", lambda: 20 * 10**9)
    free, what = dev.free_memory("mps")
    assert free == 10 * 10**9 and "Metal" in what and "20.0 GB of RAM available" in what


def test_unified_plan_counts_the_mapped_tensor():
    cuda = plan(SEVEN_B, torch.bfloat16, "int8", working=0)
    mps = plan(SEVEN_B, torch.bfloat16, "int8", working=0, unified=True)
    assert cuda.mapped == 0 and mps.mapped == 32000 * 4096 * 2  # the embedding's pages in the bf16 file
    assert mps.total == cuda.total + mps.mapped and "mapped file 0.26" in mps.describe()
    assert recommend(SEVEN_B, "mps", free=cuda.total + 1, mps_bf16=True, working=0).quantize == "int4"


def test_max_batch_size_by_hand():
    w = dev.weights_bytes(SEVEN_B)
    per_window = 4096 * 32 * 2 * 8 * 128 * 2  # tokens kept x layers x (k, v) x KV heads x head_dim x bytes
    assert planner.max_batch_size(SEVEN_B, w + 7 * per_window, w, 32768) == 7
    assert planner.max_batch_size(SEVEN_B, w + 7 * per_window - 1, w, 5000) == 6
    assert planner.max_batch_size(SEVEN_B, w + 100 * 2**20, w, 100) == 100 * 2**20 // (100 * per_window // 4096)
    assert planner.max_batch_size(SEVEN_B.replace(sliding_window=None), w + 7 * per_window, w, 32768) == 0
    assert planner.max_batch_size(SEVEN_B, w - 1, w, 10) == 0


def test_live_memory_without_proc(monkeypatch):
    """bench.memory: RssAnon where Linux has it, psutil's RSS where there is no /proc."""
    import builtins

    import psutil

    from minimistral.bench import memory
    real_open = builtins.open

    def no_proc(file, *a, **k):
        if str(file) == "/proc/self/status":  # psutil itself reads /proc on Linux: only our reader is refused
            raise FileNotFoundError(file)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    with pytest.raises(FileNotFoundError):
        memory.rss_anon()
    assert memory.live_memory() == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)
    sampler = memory.PeakSampler(every=0.001)
    sampler.start()
    assert sampler.stop() > 0


@pytest.mark.parametrize("device,kw,expected", [
    ("cuda", dict(capability=(9, 0)), torch.bfloat16),  # H100/H200
    ("cuda", dict(capability=(8, 0)), torch.bfloat16),  # A100
    ("cuda", dict(capability=(7, 5)), torch.float16),   # T4: no native bf16
    ("cuda", dict(capability=(7, 0)), torch.float16),   # V100
    ("mps", dict(mps_bf16=True), torch.bfloat16),        # macOS 14+
    ("mps", dict(mps_bf16=False), torch.float16),
    ("cpu", {}, torch.float32),
])
def test_choose_dtype(device, kw, expected):
    assert choose_dtype(device, **kw) == expected


def test_dtype_the_device_cannot_compute_in():
    with pytest.raises(ValueError, match=r"compute capability 7\.5 .*use torch\.float16"):
        check_dtype("cuda", torch.bfloat16, capability=(7, 5))
    with pytest.raises(ValueError, match="macOS 14"):
        check_dtype("mps", torch.bfloat16, mps_bf16=False)
    with pytest.raises(ValueError, match=r"torch\.int8 is not an activation dtype.*quantize='int8'"):
        check_dtype("cpu", torch.int8)
    check_dtype("cuda", torch.float16, capability=(7, 5))
    check_dtype("cuda", torch.bfloat16, capability=(8, 0))
    check_dtype("cpu", torch.bfloat16)


def test_weights_of_the_7b_by_hand():
    # 7,241,732,096 parameters: 2 x 131,072,000 in embeddings and head, 65 x 4096 in norms, 6,979,321,856 in
    # the attention and MLP linears (see test_quant.test_weight_bytes_of_the_7b)
    emb_head, norms, lin = 2 * 32000 * 4096, 65 * 4096, 6_979_321_856
    assert emb_head + norms + lin == SEVEN_B.num_params()
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096)  # output channels of the linears
    assert dev.weights_bytes(SEVEN_B, torch.bfloat16) == 2 * SEVEN_B.num_params() == 14_483_464_192
    assert dev.weights_bytes(SEVEN_B, torch.float16) == 14_483_464_192
    assert dev.weights_bytes(SEVEN_B, torch.bfloat16, "int8") == 2 * (emb_head + norms) + lin + 2 * rows
    assert dev.weights_bytes(SEVEN_B, torch.bfloat16, "int4", 128) == 2 * (emb_head + norms) + lin // 2 + lin // 128 * 4
    assert dev.weights_bytes(SEVEN_B, torch.bfloat16, "int4", 32) == 2 * (emb_head + norms) + lin // 2 + lin // 32 * 4
    # the round figures: 14.5 GB, 7.5 GB, 4.9 GB (g32), 4.2 GB (g128)
    assert round(dev.weights_bytes(SEVEN_B, torch.bfloat16, "int8") / GB, 1) == 7.5
    assert round(dev.weights_bytes(SEVEN_B, torch.bfloat16, "int4", 32) / GB, 1) == 4.9
    assert round(dev.weights_bytes(SEVEN_B, torch.bfloat16, "int4", 128) / GB, 1) == 4.2


def test_plan_of_the_7b_by_hand():
    p = plan(SEVEN_B, torch.bfloat16, "int8", working=2 * 10**9, free=12 * 10**9)
    # rolling cache at its largest: 4096 slots x 32 layers x (k, v) x 8 KV heads x 128 x 2 bytes = 0.5 GiB
    assert p.cache == 4096 * 32 * 2 * 8 * 128 * 2 == 2**29
    assert p.working == 2 * 10**9 and p.margin == 0.5 * GB
    assert p.total == p.weights + 2**29 + 2 * 10**9 + 0.5 * GB
    assert p.fits and "fits" in p.describe()
    small = plan(SEVEN_B, torch.bfloat16, working=0)
    assert small.working == 32000 * 4096 * 2  # at least one full-precision tensor in flight while loading
    assert plan(SEVEN_B, torch.bfloat16, "int4", working=0).working == 14336 * 4096 * 12
    assert not plan(SEVEN_B, torch.bfloat16, free=15 * 10**9).fits  # 14.5 + 0.54 + ... > 15


@pytest.mark.parametrize("name,expected", [
    ("80 GB datacenter GPU (A100/H100)", (torch.bfloat16, None)),
    ("24 GB consumer GPU (RTX 3090/4090)", (torch.bfloat16, None)),
    ("16 GB T4 (free Colab)", (torch.float16, "int8")),
    ("12 GB GPU (RTX 3060)", (torch.bfloat16, "int8")),
    ("8 GB GPU (RTX 4060)", (torch.bfloat16, "int4")),
    ("Apple Silicon, 32 GB", (torch.bfloat16, None)),
    ("Apple Silicon, 16 GB", (torch.bfloat16, "int8")),
    ("CPU laptop, 16 GB RAM", (torch.bfloat16, "int8")),
])
def test_decisions_for_the_device_classes(name, expected):
    table = dict((c.name, p) for c, p in planner.plan_table(SEVEN_B))  # working: notebook 11's long-prompt step
    p = table[name]
    assert (p.dtype, p.quantize) == expected, p.describe()
    assert p.fits


def test_nothing_fits_gives_none():
    assert recommend(SEVEN_B, "cpu", free=3 * 10**9) is None


def test_check_fits_names_the_figures_and_a_setting(monkeypatch):
    with pytest.raises(MemoryError, match=r"needs 15\.8 GB, 12\.0 GB free on cuda:0 .*quantize='int8'"):
        dev.check_fits(SEVEN_B, "cuda", torch.bfloat16, free=12 * 10**9, what="Mistral 7B")
    with pytest.raises(MemoryError, match=r"on cpu .*even 4-bit does not fit"):
        dev.check_fits(SEVEN_B, "cpu", torch.float32, free=2 * 10**9)
    monkeypatch.setattr(dev, "host_available", lambda: 9 * 10**9)  # CPU: available RAM is the limit
    with pytest.raises(MemoryError, match=r"9\.0 GB free on cpu \(of available RAM\).*int8"):
        dev.check_fits(SEVEN_B, "cpu", torch.bfloat16)
    assert dev.check_fits(SEVEN_B, "cpu", torch.bfloat16, "int8").fits


def test_long_prompt_working_by_hand():
    # chunk of 256 queries against 4096 + 256 keys, 32 heads, bf16: the explicit path holds scores, masked copy,
    # probabilities (2 bytes each) and the float32 softmax; two layers are recorded in float16
    n = 32 * 256 * 4352
    assert planner.capture_working_bytes(SEVEN_B, 256, 4352) == n * (3 * 2 + 4) + 2 * n * 2
    assert planner.long_prompt_working(SEVEN_B, 256) == n * 14
    assert planner.picture_chunks(SEVEN_B) == [1024, 512, 256]


@pytest.mark.parametrize("name,chunk", [("80 GB datacenter GPU (A100/H100)", 1024), ("16 GB T4 (free Colab)", 1024),
                                        ("8 GB GPU (RTX 4060)", 512), ("CPU laptop, 16 GB RAM", 512)])
def test_pictures_are_sized_to_what_is_left(name, chunk):
    p = dict((c.name, p) for c, p in planner.plan_table(SEVEN_B))[name]
    assert planner.picture_chunk(SEVEN_B, p) == chunk


@pytest.mark.slow
def test_7b_layers_stay_finite_in_fp16(one_thread):
    """What the T4 computes in: the 7B's shapes (dim 4096, 32 heads, 8 KV heads, hidden 14336, vocab 32000) with
    2 of its 32 layers, random weights (U(+-0.02), what write_random_checkpoint makes), 48 tokens, in fp16 on the
    CPU, against the same model in float32. A "massive activation" of 2,000 (what trained LLMs grow in a few
    residual dimensions, Sun et al. 2024) is planted on the first token: fp16 holds up to 65,504, and the RMSNorm
    squares in float32. The real weights are not available here: this checks the arithmetic's range, not them."""
    args = SEVEN_B.replace(n_layers=2, max_seq_len=128)
    torch.manual_seed(0)
    model = mm.Transformer(args).init_weights("uniform", std=0.02, seed=0).eval()
    with torch.no_grad():
        model.tok_embeddings.weight[1, :4] = 2000.0  # token 1 (BOS) carries the massive activation
    tokens = torch.cat([torch.tensor([[1]]), torch.randint(2, 32000, (1, 47))], dim=1)
    with torch.no_grad():
        ref = model(tokens)  # float32
        half = model.half()(tokens)
    assert torch.isfinite(half).all()
    err = (half - ref).abs().max() / ref.abs().max()
    assert err < 0.02, float(err)


@pytest.mark.parametrize("free_gib,quantize,chunk", [(6, "int4", 256), (10.7, "int8", 1024)])
def test_the_run_with_its_chunk_fits_on_a_mac(free_gib, quantize, chunk):
    """On unified memory the plan counts the mapped file pages: the chunk is the largest whose whole bill (mapped
    pages included) fits, so a 16 GB Mac with little free picks a smaller chunk rather than a run that does not fit."""
    free = int(free_gib * 2**30)
    p = recommend(SEVEN_B, "mps", free, mps_bf16=True, working=planner.long_prompt_working(SEVEN_B, 256))
    assert p.quantize == quantize and p.mapped > 0 and p.fits, p.describe()
    assert planner.picture_chunk(SEVEN_B, p) == chunk
    run = planner.run_plan(SEVEN_B, p, chunk)
    assert run.fits and run.mapped == p.mapped and run.working == max(
        planner.long_prompt_working(SEVEN_B, chunk), dev.load_working_bytes(SEVEN_B, p.dtype, p.quantize))
    larger = [c for c in planner.picture_chunks(SEVEN_B) if c > chunk]
    assert not any(planner.run_plan(SEVEN_B, p, c).fits for c in larger)


def test_plan_line_of_a_small_model_adds_up_in_mb():
    """Under 1 GB the plan's parts print in MB with two decimals, so the printed parts add up to the printed
    total (in GB they would all round to 0.00); a 7B plan stays in GB."""
    import re
    small = dev.Plan(torch.float32, None, 128, 20_456_448, 262_144, 4_194_304, 2_491_289, free=21 * 10**9)
    line = small.describe()
    parts = [float(x) for x in re.findall(r"(?:weights|cache|working|margin) ([\d.]+)", line)]
    assert parts == [20.46, 0.26, 4.19, 2.49] and "= 27.40 MB vs 21.0 GB free: fits" in line, line
    assert round(sum(parts), 2) == 27.40
    big = plan(SEVEN_B, torch.bfloat16, "int8", working=0)
    assert re.search(r"margin 0\.5 = [\d.]+ GB$", big.describe()), big.describe()
