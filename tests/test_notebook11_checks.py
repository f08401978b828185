"""Notebook 11's exercise checks catch the wrong answers they are meant to catch (a tensor or float where a
Python int is asked, no float32 upcast of a float16 record, an answer that changes its input in place) and
print a hint only after a failure. The notebook's cells run in one namespace on the small-model path."""

import re
from pathlib import Path

import jupytext
import matplotlib
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "11_real_mistral_7b.py"
SOLUTION = re.compile(r"    ### BEGIN SOLUTION\n.*?### END SOLUTION\n?", re.S)


def grade_id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


@pytest.fixture(scope="module")
def notebook(monkeypatch_module):
    """Run the cells up to exercise 11.2's check (not the widget or the timing), checks printing, not raising."""
    matplotlib.use("Agg")
    monkeypatch_module.setenv("MINIMISTRAL_CHECKS_RAISE", "0")
    for name in ("MINIMISTRAL_CHECKPOINT", "MINIMISTRAL_DEVICE", "MINIMISTRAL_QUANTIZE"):
        monkeypatch_module.delenv(name, raising=False)
    cells = [c for c in jupytext.read(NOTEBOOK).cells if c.cell_type == "code"]
    ns: dict = {}
    sources = {}
    for cell in cells:
        if "attention_explorer" not in cell.source:
            exec(compile(cell.source, str(NOTEBOOK), "exec"), ns)
        if grade_id(cell):
            sources[grade_id(cell)] = cell.source
        if grade_id(cell) == "ex11_2_attention_at_distance-check":
            break
    return ns, sources


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def run_check(notebook, capsys, exercise: str, body: str) -> str:
    """Define the exercise with `body` in place of the solution, run its check cell, return what it printed."""
    ns, sources = notebook
    capsys.readouterr()
    answer, n = SOLUTION.subn(body, sources[f"{exercise}-solution"])
    assert n == 1, f"{exercise}: no solution block found"
    exec(answer, ns)
    exec(sources[f"{exercise}-check"], ns)
    return capsys.readouterr().out


FIT = ("    kept = seq_len if args.sliding_window is None else min(seq_len, args.sliding_window)\n"
       "    per_sequence = kept * 2 * args.n_layers * args.n_kv_heads * args.head_dim * dtype_bytes\n")


def test_11_1_passes_without_a_hint(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit",
                    FIT + "    return max(0, (free_bytes - weight_bytes) // per_sequence)\n")
    assert "[PASS] 11.1" in out and "hint" not in out


@pytest.mark.parametrize("ret", ["torch.tensor(max(0, (free_bytes - weight_bytes) // per_sequence))",
                                 "max(0, (free_bytes - weight_bytes) / per_sequence)"])
def test_11_1_wants_a_python_int_without_giving_the_fix(notebook, capsys, ret):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", FIT + f"    return {ret}\n")
    assert "[FAIL] 11.1" in out and "Python int" in out
    assert "//" not in out and "int()" not in out and "hint" not in out


def test_11_1_hint_only_for_the_failed_case(notebook, capsys):
    no_window = ("    per_sequence = seq_len * 2 * args.n_layers * args.n_kv_heads * args.head_dim * dtype_bytes\n"
                 "    return max(0, (free_bytes - weight_bytes) // per_sequence)\n")
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", no_window)
    assert "[FAIL] 11.1" in out and "case 1 of 8" in out
    assert out.count("hint:") == 1 and "rolling buffer" in out


def test_11_1_todo_has_no_hint(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", "    raise NotImplementedError\n")
    assert "[TODO] 11.1" in out and "hint" not in out


DIST = "    match = (q_pos[:, None] - k_pos[None, :]) == d\n    has = match.any(1)\n"


def test_11_2_passes(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n")
    assert "[PASS] 11.2" in out and "hint" not in out


def test_11_2_float16_record_needs_the_upcast(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs * match).sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 6 of 8" in out and "float16" in out


def test_11_2_in_place_change_is_named(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    probs = probs.float() if probs.dtype != torch.float32 else probs\n"
                           "    probs.mul_(match)\n    return probs.sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 1 of 8" in out and "changed its argument `probs` in place" in out
    assert "hint" not in out


def test_11_2_index_is_not_position(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    "    k = torch.arange(probs.shape[-1])\n    q = k[-probs.shape[-2]:]\n"
                    "    match = (q[:, None] - k[None, :]) == d\n    has = match.any(1)\n"
                    "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 3 of 8" in out and "k_pos[c]" in out
