"""The exercise checks' diagnostics: each typical wrong answer fails with a message that names the case,
says how the result's form or value is off, and never prints the expected value."""

import math
import sys
from pathlib import Path

import pytest
import torch

from minimistral.labs.checks import CheckFailed, check_function, check_value


@pytest.fixture(autouse=True)
def _print_only(monkeypatch):
    """These tests read the verdict lines; a check's default of raising after [FAIL]/[TODO] (what nbgrader
    scores) is tested once, in test_a_failing_check_raises_by_default."""
    monkeypatch.setenv("MINIMISTRAL_CHECKS_RAISE", "0")


def test_a_failing_check_raises_by_default(monkeypatch, capsys):
    monkeypatch.delenv("MINIMISTRAL_CHECKS_RAISE")
    with pytest.raises(CheckFailed, match="99.1 params"):
        check_function("99.1 params", lambda n, d: 0, ref_params, [(2, 8)])
    assert capsys.readouterr().out.startswith("[FAIL] 99.1 params: ")
    assert check_function("99.1 params", twin(ref_params), ref_params, [(2, 8)])  # a pass never raises


def verdict(capsys, *args, **kwargs):
    fn = kwargs.pop("_fn", check_function)
    ok = fn(*args, **kwargs)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(("[PASS] ", "[FAIL] ", "[TODO] "))  # one verdict line
    return ok, out.strip()


def twin(fn):
    """The same function under another code object: an answer equal to the reference, not the reference itself."""
    import types
    return types.FunctionType(fn.__code__.replace(co_name=fn.__code__.co_name + "_twin"), fn.__globals__,
                              fn.__name__, fn.__defaults__, fn.__closure__)


def ref_params(n_layers, d):
    return n_layers * (4 * d * d + 2 * d)


def test_right_answers_pass_and_stubs_are_todo(capsys):
    ok, out = verdict(capsys, "99.1 params", lambda n, d: n * (4 * d * d + 2 * d), ref_params, [(2, 8), (1, 3)])
    assert ok and out == "[PASS] 99.1 params: matches the reference ref_params on 2 cases"

    def stub(n, d):
        raise NotImplementedError
    ok, out = verdict(capsys, "99.1 params", stub, ref_params, [(2, 8)])
    assert not ok and out == "[TODO] 99.1 params: not implemented yet"


def test_a_pass_line_names_what_the_answer_was_compared_with(capsys):
    """"matches the library" only when the reference is the library's own code; a brute-force reference written
    in the notebook or check cell is named as such."""
    from minimistral.labs import references
    from minimistral.labs.checks import compared_with
    from minimistral.norm import rms_norm
    from minimistral.tokenizer import Tokenizer
    x, w = torch.randn(2, 8), torch.ones(8)
    ok, out = verdict(capsys, "99.5 norm", twin(rms_norm), rms_norm, [(x, w, 1e-5)])
    assert ok and out == "[PASS] 99.5 norm: matches the library's rms_norm on 1 case"
    ok, out = verdict(capsys, "99.5 silu", lambda x: x * torch.sigmoid(x), torch.nn.functional.silu, [(x,), (w,)])
    assert ok and out == "[PASS] 99.5 silu: matches torch's silu on 2 cases"

    def brute_force(x):
        return x.sum(-1)
    ok, out = verdict(capsys, "99.5 sum", twin(brute_force), brute_force, [(x,)])
    assert ok and out == "[PASS] 99.5 sum: matches the reference brute_force on 1 case"
    ok, out = verdict(capsys, "99.5 sum", brute_force, lambda x: x.sum(-1), [(x,)])
    assert ok and out == "[PASS] 99.5 sum: matches the reference on 1 case"
    ok, out = verdict(capsys, "99.5 halves", twin(references.unpack_halves), references.unpack_halves,
                      [(torch.tensor([[0x21]], dtype=torch.uint8),)])
    assert ok and out == "[PASS] 99.5 halves: matches the course's reference unpack_halves on 1 case"
    assert compared_with(Tokenizer.decode) == "the library's Tokenizer.decode"


def test_numbers_say_too_high_or_too_low_and_name_the_case(capsys):
    ok, out = verdict(capsys, "99.1 params", lambda n_layers, d: n_layers * 4 * d * d, ref_params,
                      [(2, 8), (1, 3)], hint="count the norms")
    assert not ok
    assert "case 1 of 2 (n_layers=2, d=8)" in out and "too low" in out and out.endswith("count the norms")
    assert str(ref_params(2, 8)) not in out                               # the answer is not given away
    ok, out = verdict(capsys, "99.1 params", lambda n, d: 2 * n * (4 * d * d + 2 * d), ref_params, [(2, 8)])
    assert "too high, by a factor of 2 or more" in out
    ok, out = verdict(capsys, "99.1 params", lambda n, d: n * (4 * d * d + 2 * d) / 1, ref_params, [(2, 8)])
    assert "returned a float, expected an int" in out                     # a missing cast
    ok, out = verdict(capsys, "99.1 params", lambda n, d: n * (4 * d * d + 2 * d) + 1, ref_params, [(2, 8)],
                      labels=["two layers of width 8"])
    assert "case 1 of 1 (two layers of width 8)" in out and "too low" not in out and "too high" in out


def test_float_tolerance_is_relative_to_the_size_of_the_quantity(capsys):
    # 1e-7-sized answers: 20 % off must fail although the absolute error (2e-8) is below any absolute atol
    ok, out = verdict(capsys, "99.2 lr", lambda: 1.2e-7, 1e-7, _fn=check_value)
    assert not ok and "too high" in out
    ok, _ = verdict(capsys, "99.2 lr", lambda: 1e-7 * (1 + 1e-9), 1e-7, _fn=check_value)
    assert ok
    ref = lambda x: x * 1e-6  # noqa: E731
    ok, out = verdict(capsys, "99.3 small", lambda x: x * 1.1e-6, ref, [(torch.randn(3, 4),)])
    assert not ok and "times a constant larger than 1" in out and "(3, 4) float32 tensor" in out
    ok, out = verdict(capsys, "99.3 small", lambda x: x * -1e-6, ref, [(torch.randn(3, 4),)])
    assert not ok and "the opposite sign of the expected one" in out and "smaller than 1" not in out


def test_a_mutated_list_is_named_as_data_not_as_a_tensor(capsys):
    def pads_in_place(rows):  # right result, but it lengthens the caller's lists
        for r in rows:
            r.extend([0] * (3 - len(r)))
        return torch.tensor(rows)
    ok, out = verdict(capsys, "99.3 pad", pads_in_place, lambda rows: torch.tensor([r + [0] * (3 - len(r)) for r in rows]),
                      [([[1, 2], [3]],)])
    assert not ok and "changed its input" in out and "caller's argument" in out and "caller's tensor" not in out


def test_a_model_whose_config_was_changed_counts_as_mutated(capsys):
    import minimistral as mm
    model = mm.Transformer(mm.ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, hidden_dim=32,
                                        vocab_size=11, sliding_window=4))

    def windowed(m):  # the right number, but the caller's model keeps the window it set
        m.args.sliding_window = 2
        return 1.0

    ok, out = verdict(capsys, "99.3 window", windowed, lambda m: 1.0, [(model,)])
    assert not ok and "changed its input" in out and "restore before you return" in out and "list, dict" not in out
    ok, _ = verdict(capsys, "99.3 window", lambda m: 1.0, lambda m: 1.0, [(model,)])
    assert ok


def test_a_forbidden_constructor_is_named_as_a_new_object_not_as_the_library_answer(capsys):
    """05.5 may not build a second model (for the 7B it would not fit): building one is named as such, not as
    'the library's own version' of the answer."""
    import minimistral as mm
    small = mm.ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, hidden_dim=32, vocab_size=11,
                         sliding_window=4)
    model = mm.Transformer(small)

    def rebuilds(m):
        mm.Transformer(m.args.replace(sliding_window=2))
        return 1.0
    forbid = ["minimistral.model.Transformer.__init__"]
    ok, out = verdict(capsys, "99.4 window", rebuilds, lambda m: 1.0, [(model,)], forbid=forbid)
    assert not ok and "it uses a new minimistral.model.Transformer" in out and "own version" not in out, out
    ok, out = verdict(capsys, "99.4 window", lambda m: 1.0, lambda m: 1.0, [(model,)], forbid=forbid)
    assert ok, out
    mm.Transformer(small)  # the constructor is itself again after the check


def test_a_flipped_sign_is_reported_as_a_sign_not_as_a_scale_factor(capsys):
    ref = lambda x: 2 * x  # noqa: E731
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    ok, out = verdict(capsys, "99.3 sign", lambda x: -2 * x, ref, [(x,)])
    assert not ok and "opposite sign" in out and "scaled too" not in out and "constant smaller" not in out
    ok, out = verdict(capsys, "99.3 sign", lambda x: -x, ref, [(x,)])      # flipped and halved
    assert not ok and "opposite sign" in out and "scaled too" in out
    ok, out = verdict(capsys, "99.3 sign", lambda x: x, ref, [(x,)])       # halved, sign right
    assert not ok and "times a constant smaller than 1" in out and "opposite sign" not in out


def test_tensors_compare_shape_dtype_then_values(capsys):
    def ref(x):
        return x.cumsum(-1)
    x = torch.randn(2, 5)
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.cumsum(0), ref, [(x,)])    # wrong axis
    assert not ok and "entries differ" in out and "case 1 of 1 (x=(2, 5) float32 tensor)" in out
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.cumsum(-1).T, ref, [(x,)])  # a transpose
    assert "returned shape (5, 2), expected shape (2, 5)" in out
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.double().cumsum(-1), ref, [(x,)])
    assert "returned dtype torch.float64, expected torch.float32" in out
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.cumsum(-1).tolist(), ref, [(x,)])
    assert "returned a list of 2, expected a tensor of shape (2, 5) and dtype torch.float32" in out
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.cumsum(-1) / 0 * 0, ref, [(x,)])
    assert "nan or inf" in out
    ok, out = verdict(capsys, "99.4 cumsum", lambda x: x.cumsum(-1).flip(-1).flip(-1).roll(1, -1), ref,
                      [(torch.arange(6.0).view(2, 3),)])
    assert "entries differ" in out


def test_an_expected_infinity_has_no_tolerance(capsys):
    def ref(z):  # a logits filter: -inf for a dropped token
        return torch.where(z >= z.amax(-1, keepdim=True) - 1.0, z, -torch.inf)
    z = torch.tensor([[0.0, 2.0, 1.5, -3.0], [1.0, 0.2, 0.9, 5.0]])
    ok, out = verdict(capsys, "99.4 drop", twin(ref), ref, [(z,)])
    assert ok
    ok, out = verdict(capsys, "99.4 drop", lambda z: torch.where(z >= z.amax(-1, keepdim=True) - 1.0, z, 0.0), ref,
                      [(z,)])  # 0 where -inf belongs: |0 - (-inf)| is not within any relative tolerance of inf
    assert not ok and "should be infinite" in out
    ok, out = verdict(capsys, "99.4 drop", lambda z: torch.where(z >= z.amax(-1, keepdim=True) - 1.0, z, torch.inf),
                      ref, [(z,)])  # the wrong infinity
    assert not ok and "should be infinite" in out


def test_masks_name_the_first_wrong_entry(capsys):
    def ref(t, w):
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        return (j <= i) & (j > i - w)

    def off_by_one(t, w):
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        return (j <= i) & (j >= i - w)
    ok, out = verdict(capsys, "99.5 mask", off_by_one, ref, [(8, 3)])
    assert not ok and "case 1 of 1 (t=8, w=3)" in out and "entries are wrong, the first at index (3, 0) (yours is True there)" in out
    ok, out = verdict(capsys, "99.5 mask", lambda t, w: off_by_one(t, w - 1).float(), ref, [(8, 3)])
    assert "returned dtype torch.float32, expected torch.bool" in out


def test_lists_and_strings(capsys):
    ok, out = verdict(capsys, "99.6 ids", lambda s: [b + 2 for b in s.encode()], lambda s: [b + 3 for b in s.encode()],
                      [("é",)])
    assert "element [0] of 2: the number is slightly too low" in out and "case 1 of 1 (s='é')" in out
    ok, out = verdict(capsys, "99.6 ids", lambda s: list(s.encode())[:1], lambda s: list(s.encode()), [("é",)])
    assert "returned a list of 1, expected 2 elements" in out
    ok, out = verdict(capsys, "99.6 pair", lambda a: [a, a + 1], lambda a: (a, a + 1), [(3,)])
    assert not ok and "returned a list of 2, expected a tuple" in out
    ok, out = verdict(capsys, "99.6 pair", lambda a: (a, a + 1), lambda a: [a, a + 1], [(3,)])
    assert ok  # a tuple where a list is expected stays fine
    ok, out = verdict(capsys, "99.7 text", lambda: "helo", "hello", _fn=check_value)
    assert "differs from character 3 on, and it is shorter (yours there: 'o')" in out and "hello" not in out


def test_a_raising_answer_names_the_case(capsys):
    ok, out = verdict(capsys, "99.8 div", lambda a, b: a // b, lambda a, b: math.floor(a / b), [(4, 2), (1, 0)])
    assert not ok and out.startswith("[FAIL] 99.8 div: case 2 of 2 (a=1, b=0) raised ZeroDivisionError")


def test_labels_must_match_the_cases():
    with pytest.raises(ValueError, match="2 labels for 1 cases"):
        check_function("99.9 x", abs, abs, [(1,)], labels=["a", "b"])


def test_zeros_and_wrong_rows_are_named(capsys):
    ok, out = verdict(capsys, "99.10 zeros", lambda x: torch.zeros_like(x), lambda x: x + 1, [(torch.randn(3, 4),)])
    assert "the result is all zeros" in out

    def overwrite(ids):  # repeated ids overwrite instead of adding up
        g = torch.zeros(5, 2)
        g[ids] = torch.ones(len(ids), 2)
        return g
    ok, out = verdict(capsys, "99.11 rows", overwrite,
                      lambda ids: torch.zeros(5, 2).index_add_(0, ids, torch.ones(len(ids), 2)), [(torch.tensor([1, 1, 3]),)])
    assert "2 of 10 entries differ, in 1 of 5 rows (the largest error at index (1, 0), every wrong entry too low)" in out


# ---------------------------------------------------------------------------------------------------------------
# Each class of wrong answer that used to pass (issue 22), on synthetic functions, against outside references
# (torch's own rms_norm, silu, attention and a float64 rotation).

import torch.nn.functional as F  # noqa: E402

from minimistral.labs import checks  # noqa: E402
from minimistral.labs.checks import NO_COPIES, case  # noqa: E402


def torch_rms_norm(x, w, eps):  # the reference: torch's, in float32, cast back as Mistral does
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * w


def good_rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def test_an_answer_that_changes_its_input_is_told_so_by_name(capsys):
    def in_place(x, w, eps):  # right values, but written into the caller's tensor
        return x.mul_(torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).mul_(w)
    x = torch.randn(3, 8)
    before = x.clone()
    ok, out = verdict(capsys, "99.12 rms_norm", in_place, torch_rms_norm, [(x, torch.ones(8), 1e-5)])
    assert not ok and "changed its input 'x' in place" in out
    assert torch.equal(x, before)  # the caller's tensor is untouched: the student got a copy

    def wrong_sign_rope(x, angles):  # rotates the wrong way AND overwrites x: used to compare x with itself
        c, s = angles.cos(), angles.sin()
        a, b = x[..., 0::2].clone(), x[..., 1::2].clone()
        x[..., 0::2], x[..., 1::2] = a * c + b * s, b * c - a * s
        return x

    def rope(x, angles):
        c, s = angles.cos(), angles.sin()
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)

    def mutating_reference(x, angles):  # a reference that reads x after the student ran on it
        return rope(x, angles)
    ok, out = verdict(capsys, "99.13 rope", wrong_sign_rope, mutating_reference,
                      [(torch.randn(4, 8), torch.rand(4, 4) * 6)])
    assert not ok and "changed its input 'x' in place" in out
    ok, out = verdict(capsys, "99.13 rope", rope, mutating_reference, [(torch.randn(4, 8), torch.rand(4, 4) * 6)])
    assert ok


def test_the_in_place_message_names_an_argument_not_a_tensor(capsys):
    """A dict, a list or a config changed in place is reported as the caller's argument (not 'tensor')."""
    def pops(params):  # right count, but removes a key from the caller's dict
        params.pop("extra")
        return len(params) + 1

    def appends(ids):
        ids.append(0)
        return len(ids) - 1

    for student, arg in [(pops, {"a": 1, "extra": 2}), (appends, [1, 2, 3])]:
        before = repr(arg)
        ok, out = verdict(capsys, "99.15 count", student, len, [(arg,)])
        assert not ok and "in place (the caller's argument is not yours to change" in out and "tensor" not in out
        assert repr(arg) == before  # the caller's object is untouched: the student got a copy


def test_eps_outside_the_square_root_fails_where_the_mean_square_is_near_eps(capsys):
    def eps_outside(x, w, eps):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w
    gen = torch.Generator().manual_seed(0)
    ordinary = case(torch.randn(4, 16, generator=gen), torch.ones(16), 1e-5, label="unit-scale rows")
    tiny = case(torch.randn(4, 16, generator=gen) * 3e-3, torch.ones(16), 1e-5, label="mean square near eps")
    assert verdict(capsys, "99.14 rms_norm", eps_outside, torch_rms_norm, [ordinary])[0]  # where it cannot show
    ok, out = verdict(capsys, "99.14 rms_norm", eps_outside, torch_rms_norm, [ordinary, tiny])
    assert not ok and "case 2 of 2 (mean square near eps)" in out
    assert verdict(capsys, "99.14 rms_norm", good_rms_norm, torch_rms_norm, [ordinary, tiny])[0]


def test_a_rope_computed_in_bf16_fails_where_a_correct_bf16_answer_passes(capsys):
    def rope_f64(x, positions):  # the reference: float64 throughout, rounded once to x's dtype
        d = x.shape[-1]
        ang = positions.double()[:, None] * 10000.0 ** (-torch.arange(0, d, 2).double() / d)
        z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2)) * torch.polar(torch.ones_like(ang), ang)
        return torch.view_as_real(z).flatten(-2).to(x.dtype)

    def upcast(x, positions):  # float32 inside, bf16 out: correct
        d = x.shape[-1]
        ang = positions.float()[:, None] * 10000.0 ** (-torch.arange(0, d, 2).float() / d)
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * torch.polar(torch.ones_like(ang), ang)
        return torch.view_as_real(z).flatten(-2).type_as(x)

    def bf16_only(x, positions):  # the same formula with every step in x's dtype
        d = x.shape[-1]
        ang = positions.to(x.dtype)[:, None] * 10000.0 ** (-torch.arange(0, d, 2).to(x.dtype) / d)
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = ang.cos(), ang.sin()
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)
    gen = torch.Generator().manual_seed(1)
    cases = [case(torch.randn(6, 64, generator=gen).bfloat16(), torch.arange(6), label="bf16, positions 0-5"),
             case(torch.randn(6, 64, generator=gen).bfloat16(), torch.arange(4090, 4096), label="bf16, positions 4090-4095")]
    assert verdict(capsys, "99.15 rope", upcast, rope_f64, cases)[0]
    ok, out = verdict(capsys, "99.15 rope", bf16_only, rope_f64, cases)
    assert not ok and "case 2 of 2 (bf16, positions 4090-4095)" in out
    # fp16: a correct answer passes, squares taken in fp16 overflow
    big = [case(torch.randn(2, 256, generator=gen).half() * 300, torch.ones(256).half(), 1e-5, label="fp16, entries ~300")]
    assert verdict(capsys, "99.16 rms_norm", good_rms_norm, torch_rms_norm, big)[0]
    ok, out = verdict(capsys, "99.16 rms_norm", lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w,
                      torch_rms_norm, big)
    assert not ok and "(fp16, entries ~300)" in out


def test_calling_the_librarys_own_version_fails_in_the_notebook(capsys):
    from minimistral import norm
    from minimistral.norm import rms_norm
    forbid = ["minimistral.norm.rms_norm", "minimistral.norm.RMSNorm.forward"]
    cases = [(torch.randn(2, 8), torch.ones(8), 1e-5)]
    for cheat in (lambda x, w, eps: rms_norm(x, w, eps), lambda x, w, eps: norm.rms_norm(x, w, eps),
                  lambda x, w, eps: norm.RMSNorm(8, eps)(x) * w):
        ok, out = verdict(capsys, "99.17 rms_norm", cheat, torch_rms_norm, cases, forbid=forbid)
        assert not ok and "the library's own version" in out and "calls minimistral.norm." in out, out
    assert verdict(capsys, "99.17 rms_norm", good_rms_norm, torch_rms_norm, cases, forbid=forbid)[0]
    assert norm.rms_norm is rms_norm and "recorded" not in norm.RMSNorm.forward.__code__.co_name  # restored
    with pytest.raises(ValueError, match="names nothing importable"):
        check_function("99.17 rms_norm", good_rms_norm, torch_rms_norm, cases, forbid=["minimistral.norm.rms_nrom"])


def test_a_forbidden_function_is_seen_under_every_alias_of_its_class_or_module(capsys, monkeypatch):
    # sentencepiece's Tokenize/tokenize/encode are Encode itself: forbidding one name must forbid them all
    import sys
    import types
    lib = types.ModuleType("aliased_lib")

    class Counter:
        def Count(self, s):
            return len(s)
        count = Tally = Count
        def other(self, s):  # not an alias: stays allowed
            return len(s)

    def total(xs):
        return sum(xs)
    lib.Counter, lib.total, lib.add_up = Counter, total, total
    monkeypatch.setitem(sys.modules, "aliased_lib", lib)
    forbid = ["aliased_lib.Counter.Count", "aliased_lib.total"]
    cases = [("abc", [1, 2]), ("", [])]
    right = lambda s, xs: len(s) + sum(xs)  # noqa: E731
    cheats = {"Count": lambda s, xs: Counter().Count(s) + sum(xs), "count": lambda s, xs: Counter().count(s) + sum(xs),
              "Tally": lambda s, xs: Counter().Tally(s) + sum(xs), "add_up": lambda s, xs: len(s) + lib.add_up(xs)}
    for alias, cheat in cheats.items():
        ok, out = verdict(capsys, "99.21 aliases", cheat, right, cases, forbid=forbid)
        assert not ok and "which this exercise does not allow" in out and alias in out, (alias, out)
    assert verdict(capsys, "99.21 aliases", lambda s, xs: Counter().other(s) + sum(xs), right, cases,
                   forbid=forbid)[0]
    assert Counter.count is Counter.Tally is Counter.__dict__["Count"] and lib.add_up is lib.total is total  # restored


def test_a_forbidden_classmethod_is_seen_and_restored(capsys):
    # `RollingKVCache.from_args(...).nbytes` on the meta device does 11.1's arithmetic: forbidding the
    # classmethod must catch it (a bound method is a new object on every lookup), and put it back afterwards
    from minimistral import ModelArgs
    from minimistral.cache import RollingKVCache
    args = ModelArgs.tiny()
    right = lambda a, n: n * 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4  # noqa: E731 -- float32 K and V
    cheat = lambda a, n: RollingKVCache.from_args(a, device="meta", seq_len=n).nbytes  # noqa: E731
    forbid = ["minimistral.cache.RollingKVCache.from_args"]
    assert verdict(capsys, "99.22 from_args", cheat, right, [(args, 10)])[0]  # the cheat is right, unwatched
    ok, out = verdict(capsys, "99.22 from_args", cheat, right, [(args, 10)], forbid=forbid)
    assert not ok and "minimistral.cache.RollingKVCache.from_args" in out, out
    assert verdict(capsys, "99.22 from_args", twin(right), right, [(args, 10)], forbid=forbid)[0]
    assert isinstance(vars(RollingKVCache)["from_args"], classmethod)
    assert RollingKVCache.from_args(args, device="meta", seq_len=10).nbytes == right(args, 10)  # restored


def test_forbidden_operations_are_seen_while_the_answer_runs(capsys):
    def silu_by_hand(x):
        return x * torch.sigmoid(x)
    for cheat in (F.silu, lambda x: torch.nn.SiLU()(x), lambda x: torch._C._nn.silu(x)):
        ok, out = verdict(capsys, "99.18 silu", cheat, lambda x: x * torch.sigmoid(x.double()).float(),
                          [(torch.randn(3, 4),)], forbid=["torch.nn.functional.silu", "torch._C._nn.silu"])
        assert not ok and "which this exercise does not allow" in out and "silu" in out, out
    assert verdict(capsys, "99.18 silu", silu_by_hand, lambda x: x * torch.sigmoid(x.double()).float(),
                   [(torch.randn(3, 4),)], forbid=["torch.nn.functional.silu", "torch._C._nn.silu"])[0]

    # grouped-query attention without copying K/V heads: each way of copying them is named
    def reference(q, k, v):
        return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(q.shape[1] // k.shape[1], 1),
                                              v.double().repeat_interleave(q.shape[1] // k.shape[1], 1),
                                              is_causal=True).float()

    def grouped(q, k, v):  # the allowed way: reshape q, broadcast in @
        B, H, T, D = q.shape
        K = k.shape[1]
        s = q.view(B, K, H // K, T, D) @ k[:, :, None].transpose(-2, -1) / D ** 0.5
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return (s.softmax(-1) @ v[:, :, None]).reshape(B, H, T, D)

    def via(copy):
        def gqa(q, k, v):
            n = q.shape[1] // k.shape[1]
            kk, vv = copy(k, n), copy(v, n)
            s = (q @ kk.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(
                torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).triu(1), float("-inf"))
            return s.softmax(-1) @ vv
        return gqa
    index = lambda n, K: torch.arange(K * n) // n  # noqa: E731 -- K/V head of each query head
    copies = {
        "advanced indexing": via(lambda t, n: t[:, index(n, t.shape[1])]),
        "torch.stack": via(lambda t, n: torch.stack([t] * n, 2).flatten(1, 2)),
        "torch.Tensor.index_select": via(lambda t, n: t.index_select(1, index(n, t.shape[1]))),
        "torch.broadcast_to": via(lambda t, n: torch.broadcast_to(t[:, :, None], (t.shape[0], t.shape[1], n, *t.shape[2:])).flatten(1, 2)),
        "torch.Tensor.expand_as": via(lambda t, n: t[:, :, None].expand_as(torch.empty(t.shape[0], t.shape[1], n, *t.shape[2:])).flatten(1, 2)),
        "torch.nn.functional.scaled_dot_product_attention":
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    g = torch.Generator().manual_seed(4)
    cases = [(torch.randn(1, 8, 5, 16, generator=g), torch.randn(1, 2, 5, 16, generator=g),
              torch.randn(1, 2, 5, 16, generator=g))]
    forbid = NO_COPIES + checks.LIBRARY_ATTENTION
    assert verdict(capsys, "99.19 gqa", grouped, reference, cases, forbid=forbid)[0]
    for name, cheat in copies.items():
        assert verdict(capsys, "99.19 gqa", cheat, reference, cases)[0], name  # right values: only the rule fails
        ok, out = verdict(capsys, "99.19 gqa", cheat, reference, cases, forbid=forbid)
        assert not ok and f"it uses {name}, which this exercise does not allow" in out, (name, out)

    # the library's own use of a forbidden operation, inside an allowed library function, does not count
    from minimistral.attention import repeat_kv
    ok, out = verdict(capsys, "99.20 kv", lambda k: repeat_kv(k, 2), lambda k: k.repeat_interleave(2, 1),
                      [(torch.randn(1, 2, 3, 4),)], forbid=["torch.Tensor.expand", "torch.Tensor.repeat_interleave"])
    assert ok, out


def test_labels_are_kept_verbatim_and_cases_can_carry_them(capsys):
    ok, out = verdict(capsys, "99.21 text", lambda s: s.strip(), lambda s: s,
                      [case("  two leading spaces", label="'  two leading spaces'")])
    assert not ok and "case 1 of 1 ('  two leading spaces')" in out
    ok, out = verdict(capsys, "99.21 text", lambda s: s.rstrip(), lambda s: s, [("a  b   c\n",)])
    assert "(s='a  b   c\\n')" in out  # the automatic description, also verbatim
    assert checks.verdict_line("[FAIL]", "99.21 text", "line one\n  line two") == "[FAIL] 99.21 text: line one line two"
    with checks.collect_verdicts() as sink:
        check_function("99.21 text", lambda s: s.strip(), lambda s: s, [case("   three", label="'   three'")])
    assert "('   three')" in sink[0][2] and checks.parse_verdicts(capsys.readouterr().out) == sink


def test_half_a_percent_off_fails_at_the_default_tolerances(capsys):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    for dtype, rounding in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        xd = x.to(dtype)
        ok, out = verdict(capsys, "99.22 scale", lambda t: t * 1.005, lambda t: t.clone(), [(xd,)])
        assert not ok and "times a constant larger than 1" in out
        ok, _ = verdict(capsys, "99.22 scale", lambda t: t * (1 + rounding), lambda t: t.clone(), [(xd,)])
        assert ok  # differences the size of the dtype's rounding pass
    ok, out = verdict(capsys, "99.22 scale", lambda t: t * 1.05, lambda t: t.clone(), [(x.bfloat16(),)])
    assert not ok  # 5 % is beyond bf16's two ulps
    ok, out = verdict(capsys, "99.23 number", lambda: 3.0 * 1.005, 3.0, _fn=check_value)
    assert not ok and "slightly too high" in out
    ok, out = verdict(capsys, "99.23 number", lambda: 3.0 * 1.00015, 3.0, _fn=check_value)
    assert not ok  # check_value is stricter still: 0.015 % off fails
    ok, out = verdict(capsys, "99.23 number", lambda a: a * 1.005, lambda a: a * 1.0, [(2.5,)])
    assert not ok and "slightly too high" in out
    ok, out = verdict(capsys, "99.23 number", lambda a: a * (1 - 0.005), lambda a: a * 1.0, [(1e-7,)])
    assert not ok and "slightly too low" in out


def test_every_automatic_description_is_a_label(capsys):
    import minimistral as mm
    ok, out = verdict(capsys, "99.24 args", lambda a: a.dim + 1, lambda a: a.dim, [(mm.ModelArgs.tiny(),)])
    assert not ok and "case 1 of 1 (a=ModelArgs(" in out and "dim=" in out  # not a bare class name


def test_the_grader_sees_what_the_notebook_sees(tmp_path, monkeypatch):
    """`labs grade` runs the student's function in its sandbox: copies and forbidden operations are watched
    there too, so a notebook's own check and the grade agree (and each says why in the same words)."""
    pytest.importorskip("nbformat")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    from test_labs import read_csv, run_labs
    from minimistral.labs import sandbox
    if not sandbox.probe().full:
        pytest.skip("the grader needs its isolation (root, namespaces) here")
    monkeypatch.setenv("MINIMISTRAL_CHECKS_RAISE", "1")

    def nb(body):
        cells = [new_code_cell("import torch\nimport torch.nn.functional as F\n"
                               "from minimistral.labs.checks import check_function, case"),
                 new_code_cell("def my_silu(x):\n    ### BEGIN SOLUTION\n" + body + "\n    ### END SOLUTION"),
                 new_code_cell('_ = check_function("97.1 silu", my_silu, lambda x: x * torch.sigmoid(x), cases=[\n'
                               '    case(torch.linspace(-4, 4, 9), label="  nine points")],\n'
                               '    forbid=["torch.nn.functional.silu"])')]
        n = new_notebook(cells=cells)
        n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        return n
    (tmp_path / "source").mkdir()
    nbformat.write(nb("    return x * torch.sigmoid(x)"), tmp_path / "source" / "97_silu.ipynb")
    bodies = {"honest": "    return x * torch.sigmoid(x)", "library": "    return F.silu(x)",
              "mutates": "    return x.mul_(torch.sigmoid(x.clone()))"}
    for name, body in bodies.items():
        (tmp_path / name).mkdir()
        nbformat.write(nb(body), tmp_path / name / "97_silu.ipynb")
    csv = tmp_path / "grades.csv"
    r = run_labs("grade", *[tmp_path / n / "97_silu.ipynb" for n in bodies], "--source", tmp_path / "source",
                 "--jobs", "1", "--csv", csv)
    rows = {Path(row["file"]).parent.name: row for row in read_csv(csv)}
    assert rows["honest"]["result"] == "pass", r.stdout + r.stderr
    assert rows["library"]["result"] == "fail" and "uses torch.nn.functional.silu" in rows["library"]["hint"]
    assert rows["mutates"]["result"] == "fail" and "changed its input 'x' in place" in rows["mutates"]["hint"]
    assert "(  nine points)" in rows["mutates"]["hint"]  # the label, verbatim, through the grader too

    # a reference the library holds, called by the answer in the sandbox (where no profiler can watch for it)
    check = ('_ = check_function("97.2 slow_pair", my_pair, slow_pair_by_counting, cases=[\n'
             '    case(128, 10000.0, 5000.0, label="Mistral")])')
    header = "from minimistral.labs.checks import check_function, case\n" \
             "from minimistral.labs.references import slow_pair_by_counting"
    answers = {"honest": "    import math\n    return sum(1 for i in range(d // 2) if 2 * math.pi * t ** (2 * i / d) <= n)",
               "calls": "    from minimistral.labs import references\n    return references.slow_pair_by_counting(d, t, n)"}
    for name, body in answers.items():
        cells = [new_code_cell(header), new_code_cell("def my_pair(d, t, n):\n    ### BEGIN SOLUTION\n" + body +
                                                      "\n    ### END SOLUTION"), new_code_cell(check)]
        n = new_notebook(cells=cells)
        n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        (tmp_path / f"ref_{name}").mkdir()
        nbformat.write(n, tmp_path / f"ref_{name}" / "97_pair.ipynb")
    (tmp_path / "ref_source").mkdir()
    nbformat.write(nbformat.read(tmp_path / "ref_honest" / "97_pair.ipynb", 4), tmp_path / "ref_source" / "97_pair.ipynb")
    r = run_labs("grade", *[tmp_path / f"ref_{n}" / "97_pair.ipynb" for n in answers], "--source",
                 tmp_path / "ref_source", "--jobs", "1", "--csv", csv)
    rows = {Path(row["file"]).parent.name: row for row in read_csv(csv)}
    assert rows["ref_honest"]["result"] == "pass", r.stdout + r.stderr
    assert rows["ref_calls"]["result"] == "fail" and "slow_pair_by_counting" in rows["ref_calls"]["hint"], rows


def test_an_enlarged_copy_of_one_input_is_seen_however_it_is_written(capsys):
    # GQA without copying K/V heads: a copy made by arithmetic (no copying method named) is still a copy
    def reference(q, k, v):
        n = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(n, 1),
                                              v.double().repeat_interleave(n, 1), is_causal=True).float()

    def attend(q, k, v):
        T = q.shape[-2]
        s = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                                      float("-inf"))
        return s.softmax(-1) @ v

    def grouped(q, k, v):  # allowed: q reshaped, k and v broadcast inside @
        B, H, T, D = q.shape
        K = k.shape[1]
        return attend(q.view(B, K, H // K, T, D), k[:, :, None], v[:, :, None]).reshape(B, H, T, D)

    def per_group(q, k, v):  # allowed: one group at a time, written into a fresh output
        B, H, T, D = q.shape
        K = k.shape[1]
        n = H // K
        out = torch.empty_like(q)
        for g in range(K):
            out[:, g * n:(g + 1) * n] = attend(q[:, g * n:(g + 1) * n], k[:, g:g + 1], v[:, g:g + 1])
        return out

    def one_hot(q, k, v):
        H, K = q.shape[1], k.shape[1]
        sel = (torch.arange(H)[:, None] // (H // K) == torch.arange(K)).float()
        return attend(q, torch.einsum("hk,bksd->bhsd", sel, k), torch.einsum("hk,bksd->bhsd", sel, v))

    def plus_zeros(q, k, v):
        B, H, T, D = q.shape
        K = k.shape[1]
        grow = lambda t: (t[:, :, None] + torch.zeros(B, K, H // K, T, D)).reshape(B, H, T, D)  # noqa: E731
        return attend(q, grow(k), grow(v))
    def per_head(q, k, v):  # allowed: one query head at a time against its group's K/V head, no copy
        H, K = q.shape[1], k.shape[1]
        out = torch.empty_like(q)
        for h in range(H):
            out[:, h] = attend(q[:, h], k[:, h // (H // K)], v[:, h // (H // K)])
        return out

    def times_ones_like_q(q, k, v):  # the ones are shaped from q, but hold nothing of it
        B, H, T, D = q.shape
        K = k.shape[1]
        grow = lambda t: (t[:, :, None] * torch.ones_like(q.view(B, K, H // K, T, D))).reshape(B, H, T, D)  # noqa: E731
        return attend(q, grow(k), grow(v))

    def slice_assigned(q, k, v):  # a fresh buffer filled head by head
        H, K = q.shape[1], k.shape[1]
        kk, vv = torch.empty_like(q), torch.empty_like(q)
        for h in range(H):
            kk[:, h] = k[:, h // (H // K)]
            vv[:, h] = v[:, h // (H // K)]
        return attend(q, kk, vv)

    def over_a_clone(q, k, v):  # a buffer that held q, overwritten head by head through copy_
        H, K = q.shape[1], k.shape[1]
        kk, vv = q.clone(), q.clone()
        for h in range(H):
            kk[:, h].copy_(k[:, h // (H // K)])
            vv[:, h].copy_(v[:, h // (H // K)])
        return attend(q, kk, vv)
    g = torch.Generator().manual_seed(5)
    cases = [case(torch.randn(1, 8, 5, 16, generator=g), torch.randn(1, 2, 5, 16, generator=g),
                  torch.randn(1, 2, 5, 16, generator=g), label="8 query heads over 2 K/V heads")]
    forbid = (checks.ENLARGED_COPY,)
    for right in (grouped, per_group, per_head):
        ok, out = verdict(capsys, "99.21 gqa", right, reference, cases, forbid=forbid)
        assert ok, (right.__name__, out)
    for cheat in (one_hot, plus_zeros, times_ones_like_q, slice_assigned, over_a_clone):
        assert verdict(capsys, "99.21 gqa", cheat, reference, cases)[0]  # right values: only the rule fails
        ok, out = verdict(capsys, "99.21 gqa", cheat, reference, cases, forbid=forbid)
        assert not ok and "it uses an enlarged copy of 'k', an enlarged copy of 'v'" in out, (cheat.__name__, out)


def test_a_case_hint_replaces_the_general_one_for_a_wrong_value_only(capsys):
    cases = [case(3, label="three", hint="count from one"), case(4, label="four", hint="four is even")]
    ok, out = verdict(capsys, "99.22 count", lambda n: n + (n == 4), lambda n: n, cases, hint="general")
    assert not ok and "case 2 of 2 (four)" in out and "four is even" in out
    assert "general" not in out and "count from one" not in out
    ok, out = verdict(capsys, "99.22 count", lambda n: n / 1, lambda n: n, cases, hint="general")
    assert not ok and "expected an int" in out and "general" in out and "count from one" not in out
    ok, out = verdict(capsys, "99.22 count", lambda n: 1 // (n - 3), lambda n: n, cases)
    assert not ok and "ZeroDivisionError" in out and "count from one" in out
    ok, out = verdict(capsys, "99.22 count", lambda n: n, lambda n: n, cases, hint="general")
    assert ok and "count from one" not in out and "general" not in out


def test_raised_says_what_an_error_usually_means_in_place_of_the_hint(capsys):
    """04.5: an answer that counts the query as its own earlier copy indexes one key past the end; the check says
    what that usually means instead of leaving the learner with a bare IndexError."""
    means = {"IndexError": "a key past the last one: does a query count as its own earlier copy?"}
    cases = [case([1, 2, 3], label="three", hint="the case's hint")]
    ok, out = verdict(capsys, "99.23 next", lambda xs: xs[len(xs)], lambda xs: xs[-1], cases, hint="general",
                      raised=means)
    assert not ok and "raised IndexError" in out and "its own earlier copy" in out
    assert "the case's hint" not in out and "general" not in out
    ok, out = verdict(capsys, "99.23 next", lambda xs: 1 // 0, lambda xs: xs[-1], cases, hint="general",
                      raised=means)  # another error: the hints as before
    assert not ok and "ZeroDivisionError" in out and "the case's hint" in out and "own earlier copy" not in out
    ok, out = verdict(capsys, "99.23 next", lambda xs: xs[-1], lambda xs: xs[-1], cases, raised=means)
    assert ok


def test_an_answer_that_calls_its_own_reference_fails(capsys):
    """The reference sits in plain view in the check cell: an answer that returns its result, under any name, is
    no answer. A lambda reference is the function it calls (`lambda t: tok.encode(t)` is `tok.encode`)."""
    def cheat(n, d):
        return ref_params(n, d)
    alias = ref_params

    def cheat_by_alias(n, d):
        return alias(n, d) + 0
    for wrong in (cheat, cheat_by_alias):
        ok, out = verdict(capsys, "99.30 params", wrong, ref_params, [(2, 8)])
        assert not ok and "it calls ref_params, the very reference it is compared with" in out, out
    ok, out = verdict(capsys, "99.30 params", lambda n, d: n * (4 * d * d + 2 * d), ref_params, [(2, 8)])
    assert ok, out

    from minimistral.norm import rms_norm
    x, w = torch.randn(2, 8), torch.ones(8)
    ok, out = verdict(capsys, "99.30 norm", lambda x, w, eps: rms_norm(x, w, eps),
                      lambda x, w, eps: rms_norm(x, w, eps), [(x, w, 1e-5)])
    assert not ok and "it calls rms_norm, the very reference" in out, out
    ok, out = verdict(capsys, "99.30 norm", lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w,
                      lambda x, w, eps: rms_norm(x, w, eps), [(x, w, 1e-5)])
    assert ok, out
    # the library calling the reference inside (RMSNorm.forward calls rms_norm) is not the answer calling it
    from minimistral.norm import RMSNorm

    def through_the_module(x, w, eps):
        norm = RMSNorm(x.shape[-1], eps)
        norm.weight.data.copy_(w)
        return norm(x).detach()
    ok, out = verdict(capsys, "99.30 norm", through_the_module, lambda x, w, eps: rms_norm(x, w, eps), [(x, w, 1e-5)])
    assert ok, out
    assert sys.getprofile() is None  # and the watch is gone after the check


def test_a_case_can_ask_for_bit_for_bit_while_the_others_keep_the_dtype_tolerance(capsys):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(7))
    one_ulp_off = lambda t: torch.nextafter(t, torch.full_like(t, float("inf")))  # noqa: E731
    bf = x.bfloat16()
    ok, _ = verdict(capsys, "99.24 exact", one_ulp_off, lambda t: t.clone(), [case(bf, label="bf16")])
    assert ok  # one ulp is within bf16's own tolerance
    ok, out = verdict(capsys, "99.24 exact", one_ulp_off, lambda t: t.clone(),
                      [case(bf, label="bf16, tolerant"), case(bf, label="bf16, exact", atol=0, rtol=0)])
    assert not ok and "case 2 of 2 (bf16, exact)" in out
    ok, _ = verdict(capsys, "99.24 exact", lambda t: t.clone(), lambda t: t.clone(),
                    [case(bf, label="bf16, exact", atol=0, rtol=0)])
    assert ok


def test_through_the_library_counts_a_forbidden_call_the_library_makes_for_the_student(capsys):
    """By default the library may use a forbidden op for the student (the model's forward); with THROUGH_LIBRARY
    an answer reaching it through a library function fails (01.1: tok.encode_chat reaching sentencepiece)."""
    from minimistral.labs.checks import THROUGH_LIBRARY
    from minimistral.mlp import FeedForward
    ff = FeedForward(8, 16)

    def reference(x):
        return ff.w2(ff.w1(x) * torch.sigmoid(ff.w1(x)) * ff.w3(x))

    def through_library(x):  # FeedForward.forward calls F.silu: the student never writes it
        return ff(x)

    cases = [(torch.randn(2, 8),)]
    forbid = ["torch.nn.functional.silu"]
    assert verdict(capsys, "99.30 swiglu", through_library, reference, cases, forbid=forbid)[0]  # the default
    ok, out = verdict(capsys, "99.30 swiglu", through_library, reference, cases, forbid=forbid + [THROUGH_LIBRARY])
    assert not ok and "torch.nn.functional.silu" in out, out
    written_out = lambda x: ff.w2(torch.sigmoid(ff.w1(x)) * ff.w1(x) * ff.w3(x))  # noqa: E731
    assert verdict(capsys, "99.30 swiglu", written_out, reference, cases, forbid=forbid + [THROUGH_LIBRARY])[0]


def test_the_reference_or_a_forbidden_function_imported_as_the_answer_fails(capsys):
    """`from minimistral.labs.references import x as my_x` is the reference itself: no call watch sees that."""
    import functools

    from minimistral.norm import rms_norm
    cases = [(torch.randn(2, 8), torch.ones(8), 1e-5)]
    ok, out = verdict(capsys, "99.31 rms_norm", torch_rms_norm, torch_rms_norm, cases)
    assert not ok and "the very reference it is compared with" in out, out
    wrapped = functools.wraps(torch_rms_norm)(lambda *a: torch_rms_norm(*a))
    assert not verdict(capsys, "99.31 rms_norm", wrapped, torch_rms_norm, cases)[0]
    ok, out = verdict(capsys, "99.31 rms_norm", rms_norm, torch_rms_norm, cases, forbid=["minimistral.norm.rms_norm"])
    assert not ok and "it is minimistral.norm.rms_norm, which this exercise does not allow" in out, out
    assert verdict(capsys, "99.31 rms_norm", good_rms_norm, torch_rms_norm, cases, forbid=["minimistral.norm.rms_norm"])[0]


def _autograd_embedding_grad(ids, grad_out, vocab_size):  # the reference: autograd
    table = torch.zeros(vocab_size, grad_out.shape[-1], dtype=grad_out.dtype, requires_grad=True)
    F.embedding(ids, table).backward(grad_out)
    return table.grad


def test_autograd_is_refused_however_it_is_reached(capsys):
    """AUTOGRAD: every route to a gradient fails (the public API, the engine's private entry point, an aten backward
    kernel called directly, forward mode, torch.func), named in the message; a gradient worked out by hand passes."""
    from minimistral.labs.checks import AUTOGRAD
    cases = [(torch.tensor([[1, 2, 1]]), torch.randn(1, 3, 4), 5)]

    def by_hand(ids, grad_out, vocab_size):
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        return torch.zeros(vocab_size, flat.shape[-1], dtype=flat.dtype).index_add_(0, ids.reshape(-1), flat)

    def public(ids, grad_out, vocab_size):
        table = torch.zeros(vocab_size, grad_out.shape[-1], requires_grad=True)
        (g,) = torch.autograd.grad(F.embedding(ids, table), table, grad_out)
        return g

    def engine(ids, grad_out, vocab_size):  # what .backward() calls, under no public name
        table = torch.zeros(vocab_size, grad_out.shape[-1])
        table.requires_grad = True
        out = F.embedding(ids, table)
        torch.autograd.Variable._execution_engine.run_backward((out,), (grad_out,), False, False, (), True, True)
        return table.grad

    def kernel(ids, grad_out, vocab_size):
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        return torch.ops.aten.embedding_sparse_backward(flat, ids.reshape(-1), vocab_size, -1, False).to_dense()

    def functional(ids, grad_out, vocab_size):
        table = torch.zeros(vocab_size, grad_out.shape[-1])
        return torch.func.vjp(lambda t: F.embedding(ids, t), table)[1](grad_out)[0]

    def forward_mode(ids, grad_out, vocab_size):  # one column of the Jacobian at a time: still autograd
        import torch.autograd.forward_ad as fwAD
        table, rows = torch.zeros(vocab_size, grad_out.shape[-1]), []
        for v in range(vocab_size):
            with fwAD.dual_level():
                tangent = torch.zeros_like(table)
                tangent[v] = 1
                out = fwAD.unpack_dual(F.embedding(ids, fwAD.make_dual(table, tangent))).tangent
            rows.append((out * grad_out).sum(dim=(0, 1)))
        return torch.stack(rows)

    assert verdict(capsys, "99.40 embedding_grad", by_hand, _autograd_embedding_grad, cases, forbid=[AUTOGRAD])[0]
    for wrong in (public, engine, kernel, functional, forward_mode):
        assert verdict(capsys, "99.40 embedding_grad", wrong, _autograd_embedding_grad, cases)[0]  # unwatched
        ok, out = verdict(capsys, "99.40 embedding_grad", wrong, _autograd_embedding_grad, cases, forbid=[AUTOGRAD])
        assert not ok and "uses autograd" in out, (wrong.__name__, out)
    assert torch.is_grad_enabled()


def test_switching_the_watch_off_is_itself_seen(capsys):
    """A TorchFunctionMode sees nothing inside torch._C.DisableTorchFunction(): the check watches the switch, by
    any binding (attribute, a name imported before, a default argument), and leaves torch's own uses alone."""
    from torch._C import DisableTorchFunction

    def reference(x):
        return F.rms_norm(x, (x.shape[-1],))

    def by_attribute(x):
        with torch._C.DisableTorchFunction():
            return F.rms_norm(x, (x.shape[-1],))

    def by_name(x):
        with DisableTorchFunction():
            return F.rms_norm(x, (x.shape[-1],))

    def by_default(x, off=torch._C.DisableTorchFunction):
        with off():
            return F.rms_norm(x, (x.shape[-1],))

    def popping_the_mode(x):
        from torch.overrides import _pop_mode_temporarily
        with _pop_mode_temporarily():
            return F.rms_norm(x, (x.shape[-1],))

    forbid = ["torch.nn.functional.rms_norm"]
    cases = [(torch.randn(2, 8),)]
    for wrong in (by_attribute, by_name, by_default, popping_the_mode):
        ok, out = verdict(capsys, "99.41 rms_norm", wrong, reference, cases, forbid=forbid)
        assert not ok and "switches off the check's watch" in out, (wrong.__name__, out)
    assert torch._C.DisableTorchFunction is DisableTorchFunction and by_default.__defaults__[0] is DisableTorchFunction
    by_hand = lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)  # noqa: E731
    assert verdict(capsys, "99.41 rms_norm", by_hand, reference, cases, forbid=forbid)[0]
    assert verdict(capsys, "99.41 rms_norm", lambda x: str(x) and by_hand(x), reference, cases, forbid=forbid)[0]


def test_show_tells_where_a_wrong_list_parts_from_the_expected_one(capsys):
    """01.1: token ids compared as numbers say 'too low, by a factor of 2'; `show` turns them into pieces and
    says where yours and the expected part. A result `show` cannot read keeps the usual message."""
    pieces = {1: "▁a", 2: "a", 3: "aa", 4: "▁aa"}

    def show(ids):
        return [pieces[i] for i in ids]

    def reference(n):
        return [1, 3, 3][:n]

    cases = [case(3, label="three")]
    ok, out = verdict(capsys, "99.32 encode", lambda n: [4, 2, 3], reference, cases, show=show)
    assert not ok and "the first 0 agree, then yours: '▁aa a aa', expected: '▁a aa aa' (3 in all, expected 3)" in out
    ok, out = verdict(capsys, "99.32 encode", lambda n: [1, 3], reference, cases, show=show)
    assert not ok and "the first 2 agree, then yours: '(nothing)', expected: 'aa' (2 in all, expected 3)" in out
    ok, out = verdict(capsys, "99.32 encode", lambda n: [1, 3, 9], reference, cases, show=show)
    assert not ok and "element [2] of 3: the number is" in out, out  # 9 is no piece: the numbers it is
    assert verdict(capsys, "99.32 encode", lambda n: [1, 3, 3], reference, cases, show=show)[0]


def test_host_read_refuses_every_way_of_reading_a_position_into_python(capsys):
    """HOST_READ (12.3): `.item()`, `int()`, `.tolist()`, an `if`, a slice bound, `nonzero`, and a tensor where a
    number or size belongs (`arange(p + 1)`, `full(shape, p)`) fail; the same result computed on the device passes,
    and a library function doing a host read for the student does not count."""
    from minimistral.labs.checks import HOST_READ

    def reference(p, n):
        return torch.arange(n) + p.sum() * 0

    def device(p, n):
        return torch.arange(n) + p.sum() * 0

    wrong = {"item": lambda p, n: torch.arange(n) + p.sum().item() * 0,
             "__int__": lambda p, n: torch.arange(n) + int(p.sum()) * 0,
             "tolist": lambda p, n: torch.arange(n) + p.tolist()[0] * 0,
             "__bool__": lambda p, n: torch.arange(n) if p.sum() >= 0 else None,
             "slice bound": lambda p, n: torch.arange(n + 5)[:p.sum() * 0 + n],
             "an index": lambda p, n: torch.arange(n) + torch.arange(n)[p.sum() * 0],
             "__index__": lambda p, n: torch.arange(n) + [0, 1][p.sum() * 0],
             "nonzero": lambda p, n: torch.arange(n) + p.nonzero().sum() * 0,
             "torch.arange given a tensor": lambda p, n: torch.arange(p.sum() * 0 + n),
             "torch.full given a tensor": lambda p, n: torch.arange(n) + torch.full((n,), p.sum()) * 0,
             "torch.where with one argument": lambda p, n: torch.arange(n) + torch.where(p >= 0)[0].sum() * 0}
    cases = [(torch.tensor([3, 4]), 6)]
    for why, fn in wrong.items():
        assert verdict(capsys, "99.32 slots", fn, reference, cases)[0], why  # allowed without the rule
        ok, out = verdict(capsys, "99.32 slots", fn, reference, cases, forbid=[HOST_READ])
        assert not ok and why in out and HOST_READ in out, (why, out)
    assert verdict(capsys, "99.32 slots", device, reference, cases, forbid=[HOST_READ])[0]
    from minimistral.labs import references  # a host read the library makes for the student is its own business
    through = lambda p, n: references.slot_positions(p, n)[0] * 0 + torch.arange(n)  # noqa: E731
    assert not verdict(capsys, "99.32 slots", through, reference, cases, forbid=[HOST_READ])[0]  # labs/ is not the library


def test_a_forbidden_property_is_seen_and_restored(capsys):
    # reading `cache.nbytes` is 11.1's arithmetic done by the library: forbidding the property must catch the read
    # (a property is neither callable nor has a __code__), leave other attributes alone, and put it back afterwards
    from minimistral import ModelArgs
    from minimistral.cache import RollingKVCache
    args = ModelArgs.tiny()
    right = lambda a, n: n * 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4  # noqa: E731 -- float32 K and V
    cache = RollingKVCache.from_args(args, device="meta", seq_len=10)
    cheat = lambda a, n: cache.nbytes  # noqa: E731
    forbid = ["minimistral.cache.RollingKVCache.nbytes"]
    assert verdict(capsys, "99.24 nbytes", cheat, right, [(args, 10)])[0]  # the cheat is right, unwatched
    ok, out = verdict(capsys, "99.24 nbytes", cheat, right, [(args, 10)], forbid=forbid)
    assert not ok and "minimistral.cache.RollingKVCache.nbytes" in out, out
    assert verdict(capsys, "99.24 nbytes", lambda a, n: right(a, cache.size), right, [(args, 10)], forbid=forbid)[0]
    assert isinstance(vars(RollingKVCache)["nbytes"], property) and cache.nbytes == right(args, 10)  # restored


def test_plain_int_refuses_a_zero_d_tensor(capsys):
    cases = [(7, 2), (9, 4)]
    ref = lambda a, b: a // b  # noqa: E731
    tensor = lambda a, b: torch.tensor(a) // b  # noqa: E731
    assert verdict(capsys, "99.25 plain int", tensor, ref, cases)[0]  # taken as an int by default
    ok, out = verdict(capsys, "99.25 plain int", tensor, ref, cases, plain_int=True)
    assert not ok and "case 1 of 2" in out and "() int64 tensor, expected an int" in out and "Python int" in out, out
    assert verdict(capsys, "99.25 plain int", lambda a, b: int(torch.tensor(a) // b), ref, cases, plain_int=True)[0]
    ok, out = verdict(capsys, "99.25 plain int", lambda a, b: a / b, ref, cases, plain_int=True)
    assert not ok and "returned a float, expected an int" in out, out


def test_plain_int_refuses_a_list_of_zero_d_tensors(capsys):
    cases = [(7, 3), (9, 2)]
    ref = lambda a, n: [a + i for i in range(n)]  # noqa: E731
    tensors = lambda a, n: [torch.tensor(a + i) for i in range(n)]  # noqa: E731
    assert verdict(capsys, "99.25 plain int", tensors, ref, cases)[0]  # taken as ints by default
    ok, out = verdict(capsys, "99.25 plain int", tensors, ref, cases, plain_int=True)
    assert not ok and "case 1 of 2" in out and "list holding" in out and "expected Python ints" in out, out
    ints = lambda a, n: [int(torch.tensor(a + i)) for i in range(n)]  # noqa: E731
    assert verdict(capsys, "99.25 plain int", ints, ref, cases, plain_int=True)[0]


def test_batch_limit_refuses_a_call_on_more_sequences_trains_as_the_model_and_travels():
    """BatchLimit (10.2): a loop that must run each batch in pieces gets the model wrapped; a call on more sequences
    than allowed is refused, a call within the limit is the model's own, and the wrapper survives the codec (the
    grader's sandbox runs its forward)."""
    import minimistral as mm
    from minimistral.labs import codec
    from minimistral.labs.checks import BatchLimit, ProcedureError

    model = mm.Transformer(mm.ModelArgs.tiny(vocab_size=50, n_layers=1)).init_weights("normal", seed=0)
    tokens = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    limited = BatchLimit(model, 2)
    assert [p is q for p, q in zip(limited.parameters(), model.parameters())] == [True] * len(list(model.parameters()))
    with torch.no_grad():
        torch.testing.assert_close(limited(tokens[:2]), model(tokens[:2]))
    with pytest.raises(ProcedureError, match="3 sequences at once, but at most 2"):
        limited(tokens)
    back = codec.decode(codec.encode(limited))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens[2:]), model(tokens[2:]))
    with pytest.raises(ProcedureError, match="at most 2"):
        back(tokens)


def test_a_diagnosis_names_the_kind_of_mistake_on_a_wrong_value_only(capsys):
    cases = [case(torch.tensor([1.0, 2.0]), label="two numbers")]
    reference = lambda x: 2 * x + 1  # noqa: E731

    def diagnose(got, want, x):
        return "only the constant is off" if torch.allclose(got - 2 * x, torch.zeros_like(x)) else None

    ok, out = verdict(capsys, "99.23 affine", lambda x: 2 * x, reference, cases, diagnose=diagnose)
    assert not ok and "only the constant is off" in out
    ok, out = verdict(capsys, "99.23 affine", lambda x: 3 * x, reference, cases, diagnose=diagnose)
    assert not ok and "only the constant is off" not in out  # None: nothing added
    ok, out = verdict(capsys, "99.23 affine", lambda x: (2 * x + 1)[:1], reference, cases, diagnose=diagnose)
    assert not ok and "returned shape" in out and "only the constant" not in out  # a wrong form is not diagnosed
    ok, out = verdict(capsys, "99.23 affine", lambda x: 2 * x, reference, cases, diagnose=lambda *a: 1 / 0)
    assert not ok and "ZeroDivisionError" not in out  # a broken diagnosis is ignored
    assert verdict(capsys, "99.23 affine", lambda x: x * 2 + 1, reference, cases, diagnose=diagnose)[0]


# --- a per-case time limit: an endless or element-by-element loop fails instead of hanging the notebook ---

def test_time_limit_stops_an_endless_loop_and_says_so(capsys):
    import time as _time

    def endless(x):
        while True:
            try:
                _time.sleep(0.01)
            except Exception:  # a student's catch-all must not swallow the stop
                pass

    started = _time.perf_counter()
    ok = check_function("99.1 endless", endless, lambda x: x * 2, [case(torch.ones(3), label="three ones")],
                        time_limit=0.3)
    assert not ok and _time.perf_counter() - started < 5
    out = capsys.readouterr().out
    assert "[FAIL] 99.1 endless: case 1 of 1 (three ones): still running after 0.3 s, so it was stopped" in out
    assert "the reference takes" in out


def test_time_limit_judges_a_slow_answer_afterwards_where_it_cannot_stop_it(capsys, monkeypatch):
    import time as _time
    monkeypatch.setattr(checks.signal, "getitimer", lambda which: (1.0, 0.0))  # as if another timer ran

    def slow(x):
        _time.sleep(0.4)
        return x * 2

    assert not check_function("99.2 slow", slow, lambda x: x * 2, [case(torch.ones(3), label="three ones")],
                              time_limit=0.2)
    assert "took more than 0.2 s" in capsys.readouterr().out


def test_time_limit_leaves_a_fast_answer_and_the_signal_handler_alone(capsys):
    import signal as _signal
    before = _signal.getsignal(_signal.SIGALRM)
    assert check_function("99.3 fast", lambda x: x * 2, lambda x: x * 2, [case(torch.ones(3), label="ones")],
                          time_limit=5)
    assert _signal.getsignal(_signal.SIGALRM) is before and _signal.getitimer(_signal.ITIMER_REAL)[0] == 0
    assert check_function("99.4 none", lambda x: x * 2, lambda x: x * 2, [case(torch.ones(3), label="ones")],
                          time_limit=None)
