"""Weight-only quantization (minimistral/quant.py): packing, error bounds, kernel path vs dequantized reference,
quantize(model), bad input."""

import pytest
import torch

import minimistral as mm
from minimistral import quant
from minimistral.quant import (GROUP_SIZES, Int4Linear, Int8Linear, dequantize_int4, dequantize_int8, pack_int4,
                               quantize_int4, quantize_int8, unpack_int4)

CPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
REL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # of the output's largest value


def close(actual, expected, dtype):
    """Equal up to the rounding of `dtype`: two summation orders of the same product."""
    r = REL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=r, atol=r * float(expected.abs().max()))


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def test_pack_round_trip_is_exact():
    q = torch.randint(0, 16, (37, 64), dtype=torch.uint8)
    q[0, :16] = torch.arange(16)  # every value, both nibble positions
    packed = pack_int4(q)
    assert packed.shape == (37, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == 0x01 and int(packed[0, 1]) == 0x23  # first value in the high nibble


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="even number of columns"):
        pack_int4(torch.zeros(4, 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.full((2, 4), 16))


def test_int8_error_is_at_most_half_a_step():
    w = torch.randn(48, 80) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different sizes
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (48,) and int(q.abs().max()) == 127
    err = (dequantize_int8(q, s) - w).abs()
    assert (err <= s[:, None] / 2 * (1 + 1e-5)).all()
    assert torch.equal(q.abs().amax(1), torch.full((48,), 127, dtype=torch.int8))  # each row uses its range


def test_int8_zero_row_stays_zero():
    w = torch.randn(3, 16)
    w[1] = 0
    q, s = quantize_int8(w)
    assert torch.equal(dequantize_int8(q, s)[1], torch.zeros(16))


@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_int4_error_is_at_most_half_a_step(group_size):
    w = torch.randn(24, 256) + 3  # not centred: the zero point matters
    q, sz = quantize_int4(w, group_size)
    assert q.shape == (24, 256) and int(q.max()) <= 15 and sz.shape == (256 // group_size, 24, 2)
    step = sz[..., 0].t().repeat_interleave(group_size, 1)  # (24, 256)
    err = (dequantize_int4(q, sz, group_size) - w).abs()
    assert (err <= step / 2 + 1e-5).all()
    assert err.max() > 0  # 16 levels cannot hold random numbers exactly


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_int8_linear_kernel_equals_dequantized(device, dtype):
    if not quant.kernel_available("int8", device, dtype):
        pytest.skip(f"no int8 kernel for {device} {dtype}")
    w = torch.randn(96, 160, device=device)
    lin = Int8Linear.from_float(w, dtype)
    x = torch.randn(2, 5, 160, device=device, dtype=dtype)
    assert lin.kernel  # chosen once, when the module is made
    kernel = lin(x)
    lin.kernel = False
    reference = lin(x)
    assert kernel.shape == (2, 5, 96) and kernel.dtype == dtype
    close(kernel, reference, dtype)
    close(reference.float(), x.float() @ lin.dequantize(torch.float32).t(), dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_int8_cpu_prefill_rows_take_the_matrix_product_and_agree_with_the_kernel(dtype, monkeypatch):
    """On the CPU a chunk of at least CPU_INT8_KERNEL_MAX_ROWS rows skips the (matrix-vector) int8 kernel for
    an exact int8 -> dtype copy and one matrix product. Every row equals that row computed alone through the
    kernel, and the dequantized reference, to the dtype's rounding; just below the threshold the kernel runs."""
    if not quant.kernel_available("int8", "cpu", dtype):
        pytest.skip(f"no int8 kernel for cpu {dtype}")
    lin = Int8Linear.from_float(torch.randn(96, 160), dtype)
    rows = quant.CPU_INT8_KERNEL_MAX_ROWS
    x = torch.randn(rows + 5, 160).to(dtype)
    calls = []
    kernel = torch.ops.aten._weight_int8pack_mm
    monkeypatch.setattr(quant.torch.ops.aten, "_weight_int8pack_mm",
                        lambda *a: calls.append(a[0].shape[0]) or kernel(*a), raising=False)
    big = lin(x)
    assert calls == [] and big.shape == (rows + 5, 96) and big.dtype == dtype
    lin(x[: rows - 1])
    assert calls == [rows - 1]
    one_by_one = torch.cat([lin(x[i:i + 1]) for i in range(0, rows + 5, 19)])
    close(big[::19], one_by_one, dtype)
    close(big.float(), x.float() @ lin.dequantize(torch.float32).t(), dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_int4_linear_kernel_equals_dequantized(device, dtype, group_size):
    w = torch.randn(128, 256, device=device)
    plain = Int4Linear.from_float(w, group_size, dtype, use_kernel=False)
    assert plain.layout == "packed"
    x = torch.randn(3, 4, 256, device=device, dtype=dtype)
    reference = plain(x)
    close(reference.float(), x.float() @ plain.dequantize(torch.float32).t(), dtype)
    if not quant.kernel_available("int4", device, dtype):
        pytest.skip(f"no int4 kernel for {device} {dtype}")
    fast = Int4Linear.from_float(w, group_size, dtype, use_kernel=True)
    assert fast.layout == device
    assert torch.equal(fast.unpacked(), plain.unpacked())  # the kernel's layout holds the same values
    close(fast(x), reference, dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(64, 128), (192, 96), (48, 64)])  # one block, several blocks, not a block
def test_cpu_kernel_layout_unpacks_exactly(shape, dtype):
    """The 4-bit values come back from the kernel's own product with the identity, whatever its layout."""
    if not quant.kernel_available("int4", "cpu", dtype):
        pytest.skip("no int4 CPU kernel")
    w = torch.randn(shape) * 0.02 + 1.0  # narrow groups far from zero: the hardest case to undo exactly
    lin = Int4Linear.from_float(w, 32, dtype)
    assert lin.layout == "cpu"
    assert torch.equal(lin.unpacked(), quantize_int4(w, 32, dtype)[0])


@pytest.mark.parametrize("use_kernel", [None, False])
def test_int8_fp16_product_never_overflows(use_kernel):
    """float16 tops out at 65504. A true output of ~1,000 from weights ~1e-3: (x @ q.T) alone would be ~1,000 / s
    (s ~ 1e-5), far past it; the scale goes inside the product, so every path gives the dequantized reference.
    Rows: one (decode), and CPU_INT8_KERNEL_MAX_ROWS (the CPU prefill branch)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(32, 256, generator=gen) * 1e-3  # all positive: the sums add up
    lin = Int8Linear(*quantize_int8(w, torch.float16), use_kernel=use_kernel)
    for rows in (1, quant.CPU_INT8_KERNEL_MAX_ROWS):
        x = torch.full((rows, 256), 8.0, dtype=torch.float16)
        want = x.float() @ lin.dequantize(torch.float32).t()  # ~1.0 * 256 * 8 * 0.5e-3 ~ 1, exact in float32
        want_big = (x.float() * 1000) @ lin.dequantize(torch.float32).t()  # ~1,000: fits float16, x @ q.T does not
        assert float((x.float() * 1000 @ lin.qweight.float().t()).abs().max()) > 65504  # the old intermediate
        for inp, ref in ((x, want), (x * 1000, want_big)):
            got = lin(inp)
            assert torch.isfinite(got).all(), f"{rows} rows, use_kernel={use_kernel}: overflow"
            torch.testing.assert_close(got.float(), ref, rtol=2e-3, atol=1e-3)


def test_blocks_of_rows_give_the_whole_tensor_result(monkeypatch):
    """Quantizing (and laying out for the CPU kernel) block by block equals doing the whole matrix at once."""
    w = torch.randn(320, 128)
    whole_q8, whole_q4, whole_layout = quantize_int8(w), quantize_int4(w, 32), Int4Linear.from_float(w, 32)
    monkeypatch.setattr(quant, "_BLOCK_NUMBERS", 64 * 128)  # blocks of 64 rows
    assert len(quant._row_blocks(320, 128)) == 5
    for a, b in zip(whole_q8 + whole_q4, quantize_int8(w) + quantize_int4(w, 32)):
        assert torch.equal(a, b)
    blocked = Int4Linear.from_float(w, 32)
    assert torch.equal(blocked.qweight, whole_layout.qweight) and blocked.layout == whole_layout.layout
    if blocked.layout == "cpu":
        assert torch.equal(blocked.qweight, quant._to_cpu_layout(whole_q4[0]))  # the kernel's own whole-matrix layout


def test_shape_the_kernel_cannot_take_falls_back_to_dequantize():
    w = torch.randn(40, 64)  # the CPU kernel wants a multiple of 16 rows
    lin = Int4Linear.from_float(w, 32)
    assert lin.layout == "packed"
    x = torch.randn(3, 64)
    close(lin(x), x @ lin.dequantize().t(), torch.float32)


def test_bad_group_sizes_and_shapes():
    with pytest.raises(ValueError, match=r"group_size=48 .*\(32, 64, 128\)"):
        quantize_int4(torch.randn(8, 96), 48)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide the input dimension 96"):
        quantize_int4(torch.randn(8, 96), 64)
    with pytest.raises(ValueError, match=r"2-D floating-point weight .*shape \(16,\)"):
        quantize_int8(torch.randn(16))
    with pytest.raises(ValueError, match="torch.int64"):
        quantize_int4(torch.ones(4, 64, dtype=torch.long), 32)
    w = torch.randn(4, 64)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_int8(w)


def tiny_model(**kw):
    args = mm.ModelArgs(dim=64, n_layers=2, head_dim=16, hidden_dim=192, n_heads=4, n_kv_heads=2, vocab_size=97,
                        sliding_window=8, max_seq_len=64, **kw)
    return mm.Transformer(args).init_weights(std=0.1)


@pytest.mark.parametrize("mode,group_size,tol", [("int8", 128, 0.03), ("int4", 32, 0.2), ("int4", 64, 0.25)])
def test_quantize_model_in_memory(mode, group_size, tol):
    model = tiny_model()
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        before = model(tokens)
        out_head, emb = model.output.weight.clone(), model.tok_embeddings.weight.clone()
        assert mm.quantize(model, mode, group_size=group_size) is model
        after = model(tokens)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Int8Linear" if mode == "int8" else "Int4Linear") in kinds
    for layer in model.layers:
        for path in quant.QUANTIZED_LINEARS:
            parent, child = path.split(".")
            assert type(getattr(getattr(layer, parent), child)).__name__ != "Linear"
    assert torch.equal(model.output.weight, out_head) and torch.equal(model.tok_embeddings.weight, emb)
    assert model.quantization["mode"] == mode
    assert (after - before).abs().max() / before.abs().max() < tol
    assert not torch.equal(after, before)


def test_bad_quantize_calls_change_nothing():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"quantize='int3' .*'int8'.*'int4'"):
        mm.quantize(model, "int3")
    with pytest.raises(ValueError, match="group_size=48"):
        mm.quantize(model, "int4", group_size=48)
    with pytest.raises(ValueError, match=r"group_size=128 does not divide dim=64: use one of \[32, 64\]"):
        mm.quantize(model, "int4", group_size=128)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing half-replaced
    mm.quantize(model, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        mm.quantize(model, "int4", group_size=32)


def test_is_quantized_name():
    assert quant.is_quantized_name("layers.3.attention.wq.weight")
    assert quant.is_quantized_name("layers.0.feed_forward.w2.weight")
    assert not quant.is_quantized_name("output.weight")
    assert not quant.is_quantized_name("tok_embeddings.weight")
    assert not quant.is_quantized_name("layers.0.attention_norm.weight")


def test_weight_bytes_of_the_7b():
    # 7B: 32 layers of wq (4096x4096), wk, wv (1024x4096), wo (4096x4096), w1, w3 (14336x4096), w2 (4096x14336)
    shapes = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
    n = 32 * sum(a * b for a, b in shapes)
    assert n == 6_979_321_856
    assert 32 * sum(quant.weight_bytes(a, b, None) for a, b in shapes) == 2 * n
    assert 32 * sum(quant.weight_bytes(a, b, "int8") for a, b in shapes) == n + 32 * 2 * sum(a for a, _ in shapes)
    assert 32 * sum(quant.weight_bytes(a, b, "int4", 32) for a, b in shapes) == n // 2 + n // 32 * 4
