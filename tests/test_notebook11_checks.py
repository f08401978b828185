"""Notebook 11's exercise checks (check_function with per-case hints and forbid=) catch the wrong answers they are
meant to catch (a float where an int is asked, rounding, no float32 upcast of a float16 record, an answer that
changes its input in place, rows out of order, gaps in the key positions, the library's own arithmetic) with the
failed case's hint only. The notebook's cells run in one namespace on the small-model path."""

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


PER = "    per = 2 * args.n_layers * args.n_kv_heads * args.head_dim * dtype_bytes\n"
KEPT = "(s if args.sliding_window is None else min(s, args.sliding_window))"


def queue(kept=KEPT, cond="room < 0", per=PER, room="free_bytes - weight_bytes", ret="n") -> str:
    """A body for 11.1: the queue admitted in order, each cache `kept` tokens of `per` bytes."""
    return (per + f"    room = {room}\n    n = 0\n    for s in seq_lens:\n        room -= {kept} * per\n"
            f"        if {cond}:\n            break\n        n += 1\n    return {ret}\n")


FIT = queue()
HINTS_11_1 = ["rolling buffer", "sliding_window is None here", "served in order", "differ in length", "three quarters",
              "whatever format the weights", "weights alone", "exactly 7 caches", "7th conversation",
              "more than the queue holds", "nobody is waiting", "tiny model has its own", "each number takes one byte"]


def hints_shown(out: str, hints) -> list:
    return [h for h in hints if h in out]


def test_11_1_passes_without_a_hint(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", FIT)
    assert "[PASS] 11.1" in out and not hints_shown(out, HINTS_11_1)


@pytest.mark.parametrize("ret", ["torch.tensor(float(n))", "float(n)", "n / 1"])
def test_11_1_wants_an_int_without_a_case_hint(notebook, capsys, ret):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", queue(ret=ret))
    assert "[FAIL] 11.1" in out and "expected an int" in out and not hints_shown(out, HINTS_11_1)


SORTED = (PER + "    room = free_bytes - weight_bytes\n    n = 0\n    for s in sorted(seq_lens):\n"
          f"        room -= {KEPT} * per\n        if room < 0:\n            break\n        n += 1\n    return n\n")
SKIP = (PER + "    room = free_bytes - weight_bytes\n    n = 0\n    for s in seq_lens:\n"
        f"        if {KEPT} * per <= room:\n            room -= {KEPT} * per\n            n += 1\n    return n\n")
FIRST = PER + f"    s = seq_lens[0]\n    return min(len(seq_lens), max(0, (free_bytes - weight_bytes) // ({KEPT} * per)))\n"


@pytest.mark.parametrize("body, case, hint", [
    (queue(kept="s"), 1, "rolling buffer"),  # the window ignored
    (SORTED, 3, "served in order"),  # shortest first: more conversations, not the queue's
    (SKIP, 3, "served in order"),  # the one that does not fit overtaken
    (queue(kept="(args.sliding_window or s)"), 4, "differ in length"),  # every cache a full window
    (FIRST, 4, "differ in length"),  # right only for a queue of one length
    (queue(per=PER.replace("* dtype_bytes", "* 2")), 6, "whatever format the weights"),
    (queue(cond="room <= 0"), 8, "exactly 7 caches"),
    (queue(kept="(s if args.sliding_window is None else min(s, args.sliding_window - 1))"), 9, "7th conversation"),
    (queue(per=PER.replace("args.n_layers * args.n_kv_heads * args.head_dim", "32 * 8 * 128")), 12,
     "tiny model has its own"),
    (queue(kept="((s + 1) if args.sliding_window is None else min(s + 1, args.sliding_window))"), 13,
     "each number takes one byte")])
def test_11_1_names_the_case_with_its_own_hint_only(notebook, capsys, body, case, hint):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", body)
    assert "[FAIL] 11.1" in out and f"case {case} of 13" in out, out
    assert hints_shown(out, HINTS_11_1) == [hint]
    assert "room for the weights" not in out, out  # that diagnosis is for the weights forgotten only


def test_11_1_forgotten_weights_are_named(notebook, capsys):  # the review's beginner slip
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", queue(room="free_bytes"))
    assert "[FAIL] 11.1" in out and "did you leave room for the weights?" in out, out


def test_11_1_sorting_the_queue_in_place_is_named(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", "    seq_lens.sort()\n" + FIT)
    assert "[FAIL] 11.1" in out and "changed its input 'seq_lens' in place" in out, out


@pytest.mark.parametrize("call", ["sum(1 for s in seq_lens if args.kv_cache_bytes(s, 1, 'bfloat16') < free_bytes)",
                                  "min(len(seq_lens), planner.max_batch_size(args, free_bytes, weight_bytes, "
                                  "max(seq_lens, default=1)))"])
def test_11_1_refuses_the_library(notebook, capsys, call):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", f"    return {call}\n")
    assert "[FAIL] 11.1" in out and "the library's own version" in out


LOOP = ("    room, n = free_bytes - weight_bytes, 0\n    for s in seq_lens:\n        room -= size(s)\n"
        "        if room < 0:\n            break\n        n += 1\n    return n\n")
B = "    b = {4: torch.float32, 2: torch.bfloat16, 1: torch.float8_e4m3fn}[dtype_bytes]\n"


@pytest.mark.parametrize("body, name", [
    # the library's cache built on the meta device does the arithmetic: every way of building one, or reading its
    # size, is refused
    ("    from minimistral.cache import RollingKVCache\n" + B +
     "    def size(s):\n"
     "        return RollingKVCache.from_args(args, dtype=b, device='meta', seq_len=min(s, args.max_seq_len)).nbytes\n"
     + LOOP, "RollingKVCache.from_args"),
    ("    from minimistral.cache import RollingKVCache\n" + B +
     "    def size(s):\n"
     "        kept = s if args.sliding_window is None else min(s, args.sliding_window)\n"
     "        return RollingKVCache(args.n_layers, 1, args.n_kv_heads, args.head_dim, kept, b, 'meta').nbytes\n"
     + LOOP, "a new minimistral.cache.RollingKVCache"),
    (B + "    m = mm.Transformer(args.replace(n_layers=1, vocab_size=2, dim=8, hidden_dim=8, head_dim=args.head_dim))\n"
     "    def size(s):\n"
     "        return m.new_cache(dtype=b, device='meta', seq_len=min(s, args.max_seq_len)).nbytes * args.n_layers\n"
     + LOOP, "Transformer.new_cache")])
def test_11_1_refuses_the_librarys_cache(notebook, capsys, body, name):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", body)
    assert "[FAIL] 11.1" in out and "the library's own version" in out and name in out, out


def test_11_1_refuses_capture_bytes(notebook, capsys):  # another byte counter of the library, not the cache's
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit",
                    "    from minimistral.viz.capture import capture_bytes\n"
                    "    b = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32}[dtype_bytes]\n"
                    "    def size(s):\n"
                    "        kept = s if args.sliding_window is None else min(s, args.sliding_window)\n"
                    "        return capture_bytes(2 * args.n_layers, args.n_kv_heads, kept, args.head_dim, dtype=b)\n"
                    + LOOP)
    assert "[FAIL] 11.1" in out and "capture_bytes" in out, out


def test_11_2_refuses_distances_modulo_128(notebook, capsys):  # the small model's window, hard-coded
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    "    match = ((q_pos[:, None] - k_pos[None, :]) % 128) == d % 128\n    has = match.any(1)\n"
                    "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "300 keys" in out, out


def test_11_2_bf16_arithmetic_is_told_about_rounding(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs.bfloat16() * match).sum(-1)[:, has].mean(-1).float()\n")
    assert "[FAIL] 11.2" in out and "looks like rounding" in out and "in which dtype" in out, out


def test_11_1_refuses_a_zero_d_int_tensor(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit",
                    queue(ret="torch.tensor(n)"))
    assert "[FAIL] 11.1" in out and "expected an int" in out and "not a tensor" in out, out
    assert not hints_shown(out, HINTS_11_1)


def test_11_1_todo_has_no_hint(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_1_sequences_that_fit", "    raise NotImplementedError\n")
    assert "[TODO] 11.1" in out and not hints_shown(out, HINTS_11_1)


DIST = "    match = (q_pos[:, None] - k_pos[None, :]) == d\n    has = match.any(1)\n"


def test_11_2_passes(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n")
    assert "[PASS] 11.2" in out


def test_11_2_float16_record_needs_the_upcast(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs * match).sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 11 of 13" in out and "float16" in out and "slot order" not in out
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    return (probs * match).sum(-1)[:, has].mean(-1).float()\n")  # too late
    assert "[FAIL] 11.2" in out and "case 11 of 13" in out and "in which dtype" in out


def test_11_2_a_key_in_the_map_counts_even_at_probability_0(notebook, capsys):
    # the review's one pass: only queries whose picked probability is > 0 counted, so NaN beyond the window
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    picked = (probs.float() * match).sum(-1)\n    has = (picked > 0).any(0)\n"
                           "    return picked[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 5 of 13" in out and "it still counts" in out, out


def test_11_2_in_place_change_is_named(notebook, capsys):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance",
                    DIST + "    probs = probs.float() if probs.dtype != torch.float32 else probs\n"
                           "    probs.mul_(match)\n    return probs.sum(-1)[:, has].mean(-1)\n")
    assert "[FAIL] 11.2" in out and "case 1 of 13" in out and "changed its input 'probs' in place" in out


@pytest.mark.parametrize("body, case, words", [
    ("    k = torch.arange(probs.shape[-1])\n    q = k[-probs.shape[-2]:]\n"
     "    match = (q[:, None] - k[None, :]) == d\n    has = match.any(1)\n"
     "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n", 3, "k_pos[c]"),
    # the review's two passes: keys sorted, queries taken to be the last rows in order
    ("    T, Q = probs.shape[-1], probs.shape[-2]\n    p = probs.float()[..., torch.argsort(k_pos)]\n"
     "    qi = torch.arange(T - Q, T)\n    match = (qi[:, None] - torch.arange(T)[None, :]) == d\n"
     "    has = match.any(1)\n    return (p * match).sum(-1)[:, has].mean(-1)\n", 7, "whatever order"),
    ("    order = torch.argsort(k_pos)\n    p = probs.float()[..., order]\n"
     "    off = int(q_pos[0] - k_pos[order][0])\n"
     "    return torch.diagonal(p, offset=off - d, dim1=-2, dim2=-1).mean(-1)\n", 7, "whatever order"),
    ("    k = torch.arange(int(k_pos.min()), int(k_pos.min()) + len(k_pos))[torch.argsort(torch.argsort(k_pos))]\n"
     "    match = (q_pos[:, None] - k[None, :]) == d\n    has = match.any(1)\n"
     "    return (probs.float() * match).sum(-1)[:, has].mean(-1)\n", 8, "need not be consecutive"),
    ("    from minimistral.viz import plots\n"
     "    return torch.tensor([float(plots._distance_profile(probs[h].float(), q_pos, k_pos)[1][d]) for h in "
     "range(probs.shape[0])])\n", 1, "the library's own version")])
def test_11_2_reads_positions_not_order(notebook, capsys, body, case, words):
    out = run_check(notebook, capsys, "ex11_2_attention_at_distance", body)
    assert "[FAIL] 11.2" in out and f"case {case} of 13" in out and words in out
