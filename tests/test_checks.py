"""The exercise checks' diagnostics: each typical wrong answer fails with a message that names the case,
says how the result's form or value is off, and never prints the expected value."""

import math

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
    assert check_function("99.1 params", ref_params, ref_params, [(2, 8)])  # a pass never raises


def verdict(capsys, *args, **kwargs):
    fn = kwargs.pop("_fn", check_function)
    ok = fn(*args, **kwargs)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(("[PASS] ", "[FAIL] ", "[TODO] "))  # one verdict line
    return ok, out.strip()


def ref_params(n_layers, d):
    return n_layers * (4 * d * d + 2 * d)


def test_right_answers_pass_and_stubs_are_todo(capsys):
    ok, out = verdict(capsys, "99.1 params", lambda n, d: n * (4 * d * d + 2 * d), ref_params, [(2, 8), (1, 3)])
    assert ok and out == "[PASS] 99.1 params: matches the library on 2 cases"

    def stub(n, d):
        raise NotImplementedError
    ok, out = verdict(capsys, "99.1 params", stub, ref_params, [(2, 8)])
    assert not ok and out == "[TODO] 99.1 params: not implemented yet"


def test_numbers_say_too_high_or_too_low_and_name_the_case(capsys):
    ok, out = verdict(capsys, "99.1 params", lambda n_layers, d: n_layers * 4 * d * d, ref_params,
                      [(2, 8), (1, 3)], hint="count the norms")
    assert not ok
    assert "case 1 of 2 (n_layers=2, d=8)" in out and "too low" in out and out.endswith("count the norms")
    assert str(ref_params(2, 8)) not in out                               # the answer is not given away
    ok, out = verdict(capsys, "99.1 params", lambda n, d: 2 * ref_params(n, d), ref_params, [(2, 8)])
    assert "too high, by a factor of 2 or more" in out
    ok, out = verdict(capsys, "99.1 params", lambda n, d: ref_params(n, d) / 1, ref_params, [(2, 8)])
    assert "returned a float, expected an int" in out                     # a missing cast
    ok, out = verdict(capsys, "99.1 params", lambda n, d: ref_params(n, d) + 1, ref_params, [(2, 8)],
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
    ok, out = verdict(capsys, "99.5 mask", lambda t, w: ref(t, w).float(), ref, [(8, 3)])
    assert "returned dtype torch.float32, expected torch.bool" in out


def test_lists_and_strings(capsys):
    ok, out = verdict(capsys, "99.6 ids", lambda s: [b + 2 for b in s.encode()], lambda s: [b + 3 for b in s.encode()],
                      [("é",)])
    assert "element [0] of 2: the number is slightly too low" in out and "case 1 of 1 (s='é')" in out
    ok, out = verdict(capsys, "99.6 ids", lambda s: list(s.encode())[:1], lambda s: list(s.encode()), [("é",)])
    assert "returned a list of 1, expected 2 elements" in out
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
