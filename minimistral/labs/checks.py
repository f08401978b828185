"""Automatic checks for the course's exercises.

Every exercise ends with one call here. It prints exactly one verdict line that starts with a fixed tag,
so people read it at a glance:

    [PASS] 02.1 rms_norm: matches the library's rms_norm on 6 cases
    [FAIL] 02.1 rms_norm: <a hint that does not give the answer away>
    [TODO] 02.1 rms_norm: not implemented yet

Exercises are functions (the solution sits between `### BEGIN SOLUTION` and `### END SOLUTION`
inside the body), so a stub that raises NotImplementedError is reported as [TODO].

After printing a [FAIL] or [TODO] line the check raises `CheckFailed` (an AssertionError), so that nbgrader, which
scores a test cell by whether it raises, gives an unsolved or wrong exercise zero with nothing to configure. Set
MINIMISTRAL_CHECKS_RAISE=0 to only print (the verdict line and the return value stay the same).

The verdict line has one writer (`verdict_line`) and one parser (`parse_verdicts`); everything else uses them.
`python -m minimistral.labs grade` does not parse printed lines at all: it runs the instructor's check cells in
its own process and collects the verdicts through `collect_verdicts`.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import dis
import functools
import importlib
import inspect
import math
import numbers
import os
import re
import signal
import sys
import threading
import time
import types
from typing import Any, Callable, Iterable, Optional

import torch
from torch.overrides import TorchFunctionMode

PASS, FAIL, TODO = "[PASS]", "[FAIL]", "[TODO]"
VERDICT = re.compile(r"^\[(PASS|FAIL|TODO)\] (\d\d\.\d+ [^:\n]+): ?(.*)$", re.M)
_sinks: list[list] = []  # the grader's collectors (see collect_verdicts)


class CheckFailed(AssertionError):
    """A check's verdict was [FAIL] or [TODO]; the line above the traceback says why."""


def _one_line(message) -> str:
    """`message` on one line: line breaks (and the blanks around them) become one space; every other character,
    runs of spaces inside a case's label included, is kept as it is."""
    return re.sub(r"[ \t]*[\r\n\f\v]+[ \t]*", " ", str(message)).strip("\r\n\f\v")


def verdict_line(tag: str, exercise: str, message: str) -> str:
    """The one writer of the verdict format: `[PASS] 02.1 rms_norm: message` (one line)."""
    return f"{tag} {exercise}: {_one_line(message)}"


def parse_verdicts(text: str) -> list[tuple[str, str, str]]:
    """The one parser: every verdict line in `text` as (tag without brackets, exercise, message), in order."""
    return VERDICT.findall(text)


def raises() -> bool:
    """Checks raise after a [FAIL]/[TODO] line unless MINIMISTRAL_CHECKS_RAISE is 0, false, no or off."""
    return os.environ.get("MINIMISTRAL_CHECKS_RAISE", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def collect_verdicts():
    """Within this block, every verdict is also appended to the yielded list as (tag, exercise, message) and no
    check raises (the grader reads the verdicts from the list, in its own process)."""
    sink: list = []
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.remove(sink)


def _report(tag: str, exercise: str, message: str) -> bool:
    print(verdict_line(tag, exercise, message))
    if _sinks:
        _sinks[-1].append((tag.strip("[]"), exercise, _one_line(message)))
        return tag == PASS
    if tag != PASS and raises():
        raise CheckFailed(f"{exercise}: {message}")
    return tag == PASS


# ---- comparing an answer with the reference ------------------------------------------------------------------
# Per-dtype tolerances (atol relative to the reference's largest magnitude, rtol to each entry), chosen so that
# a correct answer computed in float32 and rounded once to the dtype passes (rounding at a different step than
# the reference may move an entry by an ulp or two), and an answer that skips the float32 upcast fails on the
# cases built to show it (long RoPE positions in bf16, fp16 squares that overflow). Everything else held to
# float32's; 0.5 % off fails in float32 and float64, for tensors and for numbers alike.
TOLERANCES = {
    torch.float64: (1e-10, 1e-7), torch.complex128: (1e-10, 1e-7),
    torch.float32: (1e-5, 1e-4), torch.complex64: (1e-5, 1e-4),
    torch.bfloat16: (2.0 ** -8, 2.0 ** -6),  # bf16 keeps 8 significant bits: 2 ulps at most
    torch.float16: (2.0 ** -11, 2.0 ** -9),  # fp16 keeps 11
}
NUMBER_TOLERANCE = (1e-5, 1e-4)  # a Python number or 0-d tensor compared with a number: (atol + rtol) x |expected|


def tolerance(dtype: torch.dtype, atol: Optional[float] = None, rtol: Optional[float] = None) -> tuple:
    """(atol, rtol) for a reference of this dtype: the given ones, or the dtype's own from TOLERANCES."""
    a, r = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    return (a if atol is None else atol), (r if rtol is None else rtol)

# `_mismatch(got, want)` returns None when they agree, otherwise one sentence saying how the answer differs in
# form (type, length, shape, dtype) or in value (which entries, too high or too low, by roughly how much) but
# never the expected value itself. Tolerances are relative to the size of the reference: a tensor's entries may
# differ by atol x (its largest magnitude) + rtol x |entry|, a number by (atol + rtol) x |number|, so small
# quantities are held to the same relative accuracy as large ones.

def _form(x) -> str:
    """What kind of thing x is, without its value: 'a (2, 3) float32 tensor', 'an int', 'a list of 4'."""
    if isinstance(x, torch.Tensor):
        return f"a {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} tensor"
    if isinstance(x, bool):
        return "a bool"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)}"
    if isinstance(x, str):
        return f"a string of {len(x)} characters"
    name = type(x).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _is_int(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Integral):
        return True
    return isinstance(x, torch.Tensor) and x.ndim == 0 and not x.is_floating_point() and x.dtype != torch.bool


def _as_number(x):
    if isinstance(x, torch.Tensor) and x.ndim == 0 and x.dtype != torch.bool:
        return x.item()
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return x
    return None


def _how_far(got: float, want: float) -> str:
    """'too high', 'too low', with a coarse size ('slightly', 'by a factor of 2 or more') that does not give
    the expected value away."""
    word = "too high" if got > want else "too low"
    if want != 0 and got != 0 and (got > 0) == (want > 0):
        ratio = max(abs(got / want), abs(want / got))
        if ratio >= 2:
            return f"{word}, by a factor of 2 or more"
        if ratio < 1.01:
            return f"slightly {word} (within 1 %)"
    elif want != 0 and got != 0 and (got > 0) != (want > 0):
        return f"{word} (even its sign is wrong)"
    return word


def _index(flat: int, shape) -> tuple:
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    return tuple(reversed(idx))


def _tensor_mismatch(got: torch.Tensor, want: torch.Tensor, atol: Optional[float],
                     rtol: Optional[float]) -> Optional[str]:
    atol, rtol = tolerance(want.dtype, atol, rtol)
    if got.shape != want.shape:
        return f"returned shape {tuple(got.shape)}, expected shape {tuple(want.shape)}"
    if got.dtype != want.dtype:
        return f"returned dtype {got.dtype}, expected {want.dtype} (same shape)"
    if got.numel() == 0:
        return None
    if not want.is_floating_point() and not want.is_complex():
        wrong = got != want
        if not wrong.any():
            return None
        first = _index(int(wrong.flatten().nonzero()[0]), want.shape)
        where = f"{int(wrong.sum())} of {want.numel()} entries are wrong, the first at index {first}"
        if want.dtype == torch.bool:
            return f"{where} (yours is {bool(got[first])} there)"
        return f"{where} (yours is {_how_far(int(got[first]), int(want[first]))} there)"
    g, w = got.detach().to(torch.complex128 if want.is_complex() else torch.float64), \
        want.detach().to(torch.complex128 if want.is_complex() else torch.float64)
    if not torch.isfinite(g).all() and torch.isfinite(w).all():
        bad = (~torch.isfinite(g)).flatten().nonzero()
        return f"{len(bad)} of {want.numel()} entries are nan or inf, the first at index " \
               f"{_index(int(bad[0]), want.shape)}"
    scale = float(w.abs().max()) if torch.isfinite(w).all() else 1.0
    scale = scale if scale > 0 else 1.0
    err = (g - w).abs()
    inf_missed = w.isinf() & (g != w)  # an infinite entry (a -inf logit: a dropped token) has no tolerance
    wrong = (~(err <= atol * scale + rtol * w.abs()) & ~((g == w) | (g.isnan() & w.isnan()))) | inf_missed
    if not wrong.any():
        return None
    n = int(wrong.sum())
    if not g.any() and w.any():
        return "the result is all zeros"
    worst = _index(int(torch.where(wrong, err, torch.zeros_like(err)).flatten().argmax()), want.shape)
    rows = ""
    if want.ndim >= 2:
        bad_rows = int(wrong.reshape(-1, want.shape[-1]).any(-1).sum())
        n_rows = want.numel() // want.shape[-1]
        rows = f", in {bad_rows} of {n_rows} rows" if bad_rows < n_rows else ""
    msg = f"{n} of {want.numel()} entries differ{rows} (the largest error at index {worst}"
    if not want.is_complex():
        diff = (g - w)[wrong]
        if (diff > 0).all() or (diff < 0).all():
            msg += f", every wrong entry {'too high' if bool(diff[0] > 0) else 'too low'}"
    msg += ")"
    if inf_missed.any():
        msg += f"; {int(inf_missed.sum())} of them should be infinite, of the expected sign, and are not"
        return msg
    wf, gf = w.flatten(), g.flatten()
    c = (wf.conj() @ gf) / (wf.conj() @ wf) if float((wf.abs() ** 2).sum()) > 0 else None
    if c is not None and not want.is_complex() and abs(float(c)) > 1e-3 and float((gf - c * wf).abs().max()) <= atol * scale + 1e-3 * scale \
            and abs(float(c) - 1) > 1e-3:
        if float(c) < 0:  # a flipped sign is not a scale factor: say so
            msg += "; the result has the opposite sign of the expected one" + \
                   ("" if abs(abs(float(c)) - 1) <= 1e-3 else ", and is scaled too") + " (a sign flipped somewhere?)"
        else:
            msg += f"; the result is the expected one times a constant {'larger' if float(c) > 1 else 'smaller'}" \
                   f" than 1 (a missing or extra scale factor?)"
    elif not want.is_complex() and want.numel() > 1 and torch.allclose(gf.sort().values, wf.sort().values,
                                                                      atol=atol * scale, rtol=rtol):
        msg += "; the right numbers in the wrong places (an axis, an order or a transpose?)"
    return msg


def _mismatch(got, want, atol: Optional[float] = None, rtol: Optional[float] = None) -> Optional[str]:
    """None when `got` matches `want`; otherwise how it differs, without giving `want` away. A tolerance left
    at None is the dtype's own (TOLERANCES) for a tensor, NUMBER_TOLERANCE for a number."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"returned {_form(got)}, expected a tensor of shape {tuple(want.shape)} and dtype {want.dtype}"
        return _tensor_mismatch(got, want, atol, rtol)
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"returned {_form(got)}, expected a {type(want).__name__} of {len(want)}"
        if len(got) != len(want):
            return f"returned a {type(got).__name__} of {len(got)}, expected {len(want)} elements"
        if isinstance(want, tuple) and isinstance(got, list):  # an exercise that asks for a tuple gets one
            return f"returned a list of {len(got)}, expected a tuple: write (a, b), not [a, b]"
        for i, (x, y) in enumerate(zip(got, want)):
            why = _mismatch(x, y, atol, rtol)
            if why is not None:
                return f"element [{i}] of {len(want)}: {why}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"returned {_form(got)}, expected a dict with keys {sorted(map(str, want))}"
        for key in want:
            why = _mismatch(got[key], want[key], atol, rtol)
            if why is not None:
                return f"key {key!r}: {why}"
        return None
    if isinstance(want, bool):
        if not isinstance(got, bool):
            return f"returned {_form(got)}, expected a bool (True or False)"
        return None if got == want else "the wrong truth value"
    if isinstance(want, numbers.Integral):
        if not _is_int(got):
            return f"returned {_form(got)}, expected an int" + \
                (" (a float or division result left uncast? use // or int())" if _as_number(got) is not None else "")
        got = int(_as_number(got))
        return None if got == int(want) else f"the number is {_how_far(got, int(want))}"
    if isinstance(want, numbers.Real):
        got_n = _as_number(got)
        if got_n is None:
            return f"returned {_form(got)}, expected a number (a float)"
        got_n, want_f = float(got_n), float(want)
        atol = NUMBER_TOLERANCE[0] if atol is None else atol
        rtol = NUMBER_TOLERANCE[1] if rtol is None else rtol
        if math.isnan(got_n) and not math.isnan(want_f):
            return "the number is nan"
        if got_n == want_f or abs(got_n - want_f) <= (atol + rtol) * abs(want_f) or (want_f == 0 and abs(got_n) <= atol):
            return None
        return f"the number is {_how_far(got_n, want_f)}"
    if isinstance(want, str):
        if not isinstance(got, str):
            return f"returned {_form(got)}, expected a string"
        if got == want:
            return None
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        size = "" if len(got) == len(want) else f", and it is {'longer' if len(got) > len(want) else 'shorter'}"
        return f"the string differs from character {first} on{size} (yours there: {got[first:first + 12]!r})"
    try:
        same = got == want
        same = bool(same.all()) if hasattr(same, "all") else bool(same)
    except Exception:
        same = False
    return None if same else f"returned {_form(got)}, which differs from the expected {_form(want)}"


def _close(a, b, atol, rtol) -> bool:
    return _mismatch(a, b, atol, rtol) is None


def _input(x) -> str:
    """One argument of a case, described briefly: tensors by shape and dtype, short values by value."""
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')} tensor"
    if isinstance(x, (bool, int, float, type(None))) or isinstance(x, numbers.Number):
        return repr(x)
    if isinstance(x, str):
        return repr(x) if len(x) <= 24 else repr(x[:21]) + "..."
    if isinstance(x, (list, tuple)):
        r = repr(x)
        return r if len(r) <= 40 else f"{type(x).__name__} of {len(x)}"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # a config: its fields, as many as fit
        parts, out = [f"{f.name}={getattr(x, f.name)!r}" for f in dataclasses.fields(x)], []
        for p in parts:
            if len(", ".join(out + [p])) > 100:
                out.append("...")
                break
            out.append(p)
        return f"{type(x).__name__}({', '.join(out)})"
    r = repr(x)
    return r if len(r) <= 60 and "\n" not in r else type(x).__name__


def _param_names(*fns: Callable) -> list:
    """The positional parameter names of the first of `fns` that has a readable signature (the student's
    function, else the reference: in the grader the student's is a proxy without one)."""
    for fn in fns:
        try:
            params = [p.name for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if params:
            return params
    return []


def _describe_case(fn: Callable, case: tuple, reference: Optional[Callable] = None) -> str:
    params = _param_names(fn, *([reference] if reference is not None else []))
    names = params if len(params) >= len(case) else [None] * len(case)
    return ", ".join(_input(x) if name is None else f"{name}={_input(x)}" for name, x in zip(names, case))


# ---- declaring cases -------------------------------------------------------------------------------------------

class Case(tuple):
    """One case's arguments with the label its [FAIL] line shows verbatim: `case(x, w, 1e-5, label="...")`."""
    label: Optional[str] = None
    hint: str = ""
    atol: Optional[float] = None  # this case's own tolerances, in place of check_function's (0, 0: bit for bit)
    rtol: Optional[float] = None


def case(*args, label: str, hint: str = "", atol: Optional[float] = None, rtol: Optional[float] = None) -> Case:
    """The arguments of one case and what it tests, side by side in the check cell. hint: shown, in place of
    check_function's own, when this case's value is wrong or it raises (not when the result has the wrong
    type, shape or dtype, or a rule is broken: those messages say it all, and check_function's hint is shown).
    atol/rtol: this case's tolerances, in place of check_function's (atol=0, rtol=0 asks for bit-for-bit)."""
    c = Case(args)
    c.label, c.hint, c.atol, c.rtol = label, hint, atol, rtol
    return c


# ---- running the student's function ---------------------------------------------------------------------------
# The student's function gets its own deep copies of a case's arguments; the reference gets the untouched
# originals, so an answer that writes into its input neither changes what it is compared with nor goes unseen.
# `forbid` names what the exercise does not allow, by dotted name: torch functions and Tensor methods
# ("torch.stack", "torch.Tensor.expand", "torch.nn.functional.silu"), the library's own functions
# ("minimistral.norm.rms_norm"), other Python functions and methods ("sentencepiece.SentencePieceProcessor.decode"),
# and ADVANCED_INDEXING (indexing a tensor with a tensor or a list). They are detected while the student's
# function runs: torch's (names starting with "torch.") through a TorchFunctionMode, the others by replacing
# every binding of them (on their class or module, in minimistral's modules, in the function's globals and
# closures) with a recording wrapper for the call's duration. Calls made by the library itself (the student
# calling an allowed library function that uses a forbidden one inside) do not count. In the grader the function is a proxy for the student's code in a
# sandbox: the same `run_student` runs there (labs/worker.py) and sends back what it saw.

ADVANCED_INDEXING = "advanced indexing"
# A copy however it is written (a one-hot einsum, `x[:, :, None] + zeros`, `x * ones`): any torch operation whose
# tensor inputs come from ONE argument of the student's function alone (and from nothing else but fresh tensors)
# and whose result has more elements than that argument. Mixing two arguments (q with k in `@`) never counts.
# Fresh means made by a factory, which takes no values from an argument (`torch.zeros`, `ones_like(q)`,
# `q.new_empty`). A write (`buf[i] = x`, `buf[i].copy_(x)`) of values from one argument alone into a buffer with
# more elements than that argument counts too, whatever the buffer held before. Other in-place operations
# (`add_`, `masked_fill_`) count as ordinary ones: their result comes from what the buffer held and the values.
ENLARGED_COPY = "an enlarged copy"
# By default a forbidden function the library calls for the student (the model's forward using SDPA) is allowed:
# the exercise may call the model. With THROUGH_LIBRARY in `forbid`, a use through any library function counts too
# (for exercises that need none: `tok.encode_chat(...)` reaching sentencepiece's encode must fail 01.1).
THROUGH_LIBRARY = "through the library"
# A value read back into Python, which a CUDA graph cannot stop to do mid-replay (12.3): `.item()`, `int(t)`,
# `.tolist()`, `if t:`, `range(t)`, a slice bound `x[:t]`, a result whose shape depends on the values (`nonzero`,
# `masked_select`, `unique`, one-argument `where`), and a tensor given where a number or a size belongs
# (`torch.arange(p + 1)`, `torch.full(shape, t)`, `x.view(t)`), which the host must read first.
HOST_READ = "a read of a tensor's value into Python"
_HOST_READS = {getattr(torch.Tensor, m): f"torch.Tensor.{m}" for m in (
    "item", "tolist", "__int__", "__index__", "__bool__", "__float__", "__complex__", "numpy", "nonzero",
    "masked_select", "unique", "unique_consecutive")}
_HOST_READS.update({torch.nonzero: "torch.nonzero", torch.masked_select: "torch.masked_select",
                    torch.unique: "torch.unique", torch.unique_consecutive: "torch.unique_consecutive"})
_NUMBER_ARGS = {  # function: (index of its first argument that must be a number or a size, its name)
    getattr(owner, f): (i, f"{prefix}.{f}") for prefix, owner, i, names in (
        ("torch", torch, 0, ("arange", "range", "linspace", "logspace", "full", "zeros", "ones", "empty", "rand",
                             "randn", "randint")),
        ("torch", torch, 1, ("full_like", "reshape", "narrow", "tile", "roll")),
        ("torch.Tensor", torch.Tensor, 1, ("new_full", "new_zeros", "new_ones", "new_empty", "expand", "repeat",
                                           "view", "reshape", "narrow", "tile", "roll"))) for f in names}


def _host_read(func, args, kwargs) -> Optional[str]:
    """HOST_READ's name for this call, if it reads a tensor's value into Python; else None."""
    try:
        name = _HOST_READS.get(func)
        first, number_name = _NUMBER_ARGS.get(func, (None, None))
    except TypeError:  # an unhashable callable
        return None
    if name is not None:
        return f"{name} ({HOST_READ})"
    if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1:
        items = args[1] if isinstance(args[1], tuple) else (args[1],)
        bounds = [b for i in items if isinstance(i, slice) for b in (i.start, i.stop, i.step)]
        if any(isinstance(b, torch.Tensor) for b in bounds) or any(
                isinstance(i, torch.Tensor) and i.ndim == 0 and not i.is_floating_point() and i.dtype != torch.bool
                for i in items):
            return f"an index or slice bound taken from a tensor ({HOST_READ})"
    if func is torch.where and len(args) + len(kwargs or {}) == 1:
        return f"torch.where with one argument ({HOST_READ}: its shape depends on the values)"
    rest = (list(args[first:]), [v for k, v in (kwargs or {}).items() if k != "out"]) if first is not None else ()
    if any(True for _ in _tensors(rest)):
        return f"{number_name} given a tensor where a number belongs ({HOST_READ})"
    return None


# Autograd however it is reached (`backward`, `torch.autograd.grad`, `torch.func`, the engine's private entry points,
# an aten `*_backward` kernel called directly, forward mode): any tensor made during the call that requires grad (no
# gradient comes back without one), any op named `*backward*`, and forward mode's `_make_dual`. For exercises that
# ask for a gradient worked out by hand.
AUTOGRAD = "autograd"
_SPECIAL = (ADVANCED_INDEXING, ENLARGED_COPY, THROUGH_LIBRARY, HOST_READ, AUTOGRAD)
# What switches the watch itself off (a TorchFunctionMode sees nothing inside `torch._C.DisableTorchFunction()`):
# watched whenever anything is forbidden, counted when the student's own code calls it (torch calls it too).
_BLINDFOLDS = ("torch._C.DisableTorchFunction", "torch._C._pop_torch_function_stack",
               "torch._C._set_torch_function_state", "torch.overrides._pop_mode", "torch.overrides._pop_mode_temporarily")
NO_COPIES = ("torch.Tensor.repeat", "torch.Tensor.repeat_interleave", "torch.repeat_interleave",
             "torch.Tensor.expand", "torch.Tensor.expand_as", "torch.broadcast_to", "torch.Tensor.broadcast_to",
             "torch.broadcast_tensors", "torch.stack", "torch.cat", "torch.concat", "torch.index_select",
             "torch.Tensor.index_select", "torch.gather", "torch.Tensor.gather", "torch.take", "torch.tile",
             "torch.Tensor.tile", ADVANCED_INDEXING)
LIBRARY_ATTENTION = ("torch.nn.functional.scaled_dot_product_attention",
                     "torch._C._nn.scaled_dot_product_attention",
                     "torch.nn.functional.multi_head_attention_forward", "torch.nn.MultiheadAttention.forward")
_LIB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../minimistral
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_STDLIB_DIR = os.path.dirname(os.path.abspath(contextlib.__file__))


def _resolve(name: str):
    """The object a dotted name stands for: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                raise ValueError(f"forbid: {name!r} names nothing importable ({'.'.join(parts[:k])} has no "
                                 f"{attr!r}; write it as a dotted path, e.g. 'torch.nn.functional.silu')")
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"forbid: {name!r} names nothing importable (write it as a dotted path, e.g. "
                     "'torch.nn.functional.silu')")


def _called_by_library(frame=None) -> bool:
    """Whether the nearest caller outside torch and this file is the library's own code (not the student's);
    from `frame` upward when it is given."""
    f = sys._getframe(2) if frame is None else frame
    here = os.path.abspath(__file__)
    while f is not None:
        name = f.f_code.co_filename
        if name != here and not name.startswith(_TORCH_DIR) and not name.startswith("<frozen"):
            return name.startswith(_LIB_DIR) and not name.startswith(os.path.join(_LIB_DIR, "labs"))
        f = f.f_back
    return False


def _advanced(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, list) or isinstance(i, torch.Tensor) and (i.ndim > 0 or i.dtype == torch.bool)
               for i in items)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class _Origins:
    """Which of the student's arguments each tensor made during the call derives from (ENLARGED_COPY)."""

    def __init__(self, inputs: tuple):
        self.origin, self.size, self.keep = {}, {}, []  # keep: every tagged tensor, so no id() is reused
        for i, x in enumerate(inputs):
            if isinstance(x, torch.Tensor):
                self.size[i] = x.numel()
                self._tag(x, frozenset((i,)))

    def _tag(self, t, src):
        self.origin[id(t)] = self.origin.get(id(t), frozenset()) | src
        self.keep.append(t)

    def _src(self, obj):
        return frozenset().union(*(self.origin.get(id(t), frozenset()) for t in _tensors(obj)))

    def enlarged(self, func, args, kwargs, result) -> Optional[int]:
        """The argument index a result (or a write) enlarges, when it comes from that argument alone; else None."""
        if func in _FACTORIES:
            return None  # shape and dtype only: a fresh tensor
        if func in _WRITES and args and isinstance(args[0], torch.Tensor):  # values written over part of args[0]
            dest = args[0]
            values = args[2:] if func is torch.Tensor.__setitem__ else (args[1:], kwargs)
            src = self._src(values)
            if src:
                for t in (dest, dest._base):
                    if t is not None:
                        self._tag(t, src)
            if len(src) == 1:
                (i,) = src
                if (dest._base if dest._base is not None else dest).numel() > self.size[i]:
                    return i
            return None
        src = self._src((args, kwargs))
        if not src:
            return None
        out = list(_tensors(result))
        for t in out:
            self._tag(t, src)
        if len(src) == 1:
            (i,) = src
            if any(t.numel() > self.size[i] for t in out):
                return i
        return None


_FACTORIES = {torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like, torch.rand_like,
              torch.randn_like, torch.randint_like, torch.Tensor.new_empty, torch.Tensor.new_zeros,
              torch.Tensor.new_ones, torch.Tensor.new_full}
_WRITES = {torch.Tensor.__setitem__, torch.Tensor.copy_}


def _is_backward_op(func) -> bool:
    name = getattr(func, "__name__", "") or ""
    return isinstance(name, str) and ("backward" in name or name.startswith("_make_dual"))


class _TorchWatch(TorchFunctionMode):
    def __init__(self, rules: dict, advanced: bool, used: list, origins: Optional[_Origins] = None,
                 strict: bool = False, host: bool = False, autograd: bool = False):
        super().__init__()
        self.rules, self.advanced, self.used, self.origins, self.strict = rules, advanced, used, origins, strict
        self.host, self.autograd = host, autograd

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            name = self.rules.get(func)
        except TypeError:  # an unhashable callable: not one of ours
            name = None
        if name is None and self.advanced and func is torch.Tensor.__getitem__ and len(args) > 1 \
                and _advanced(args[1]):
            name = ADVANCED_INDEXING
        if name is None and self.host:
            name = _host_read(func, args, kwargs)
        if name is None and self.autograd and _is_backward_op(func):
            name = f"{AUTOGRAD} ({getattr(func, '__name__', func)})"
        if name is not None and (self.strict or not _called_by_library()):
            self.used.append(name)
        result = func(*args, **(kwargs or {}))
        if self.autograd and any(t.requires_grad for t in _tensors(result)):  # library-made ones too: the student
            self.used.append(f"{AUTOGRAD} (a tensor that requires grad)")  # gave it what to track
        if self.origins is not None:
            i = self.origins.enlarged(func, args, kwargs, result)
            if i is not None and not _called_by_library():
                self.used.append(f"{ENLARGED_COPY} of argument {i + 1}")
        return result


@contextlib.contextmanager
def watching(forbid: Iterable[str], globals_: Optional[dict] = None, student: Optional[Callable] = None,
             inputs: tuple = ()):
    """Within this block, record (into the yielded list, by name) every use of what `forbid` names: the
    library's functions through every binding of them (minimistral's modules, their classes, `globals_`, and
    the closures of `student` and of what it wraps). ENLARGED_COPY watches the tensors among `inputs`."""
    used: list = []
    rules, library = {}, {}  # object -> name; name -> library function
    advanced, origins, strict = False, None, THROUGH_LIBRARY in forbid
    host, autograd = HOST_READ in forbid, AUTOGRAD in forbid
    for name in forbid:
        if name in (THROUGH_LIBRARY, HOST_READ, AUTOGRAD):
            continue
        if name == ADVANCED_INDEXING:
            advanced = True
            continue
        if name == ENLARGED_COPY:
            origins = _Origins(tuple(inputs))
            continue
        obj = _resolve(name)
        if name.startswith("torch."):
            rules.setdefault(obj, name)  # one object under two names: the first, the one the text uses
        if not name.startswith("torch.") and (callable(obj) or isinstance(obj, property)) or hasattr(obj, "__code__"):
            library[name] = obj  # Python-level (torch.func.grad, say, which no TorchFunctionMode sees): rebind it
    saved = []  # (restore function, ...) in the order they were applied

    def wrap(obj, name):
        @functools.wraps(obj)
        def recorded(*args, **kwargs):
            if strict or not _called_by_library():
                used.append(name)
            return obj(*args, **kwargs)
        return recorded

    def blind(obj, name):  # counted only when the student's own code calls it: torch and contextlib call these too
        @functools.wraps(obj)
        def recorded(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if not caller.startswith((_TORCH_DIR, _STDLIB_DIR, "<frozen")) and caller != __file__:
                used.append(f"{name} (it switches off the check's watch)")
            return obj(*args, **kwargs)
        return recorded

    def bindings(fn, seen):  # the student's function, and functions it wraps or closes over: their closures
        if fn is None or id(fn) in seen:
            return []
        seen.add(id(fn))
        cells = [c for c in (getattr(fn, "__closure__", None) or ())]
        inner = [getattr(fn, "__wrapped__", None)] + [c.cell_contents for c in cells
                                                       if _has_contents(c) and callable(c.cell_contents)]
        return cells + [c for f in inner for c in bindings(f, seen)]
    cells = bindings(student, set())
    functions = [student] + [getattr(student, "__wrapped__", None)]
    functions += [c.cell_contents for c in cells if _has_contents(c) and inspect.isfunction(c.cell_contents)]
    blindfolds = {}
    for name in _BLINDFOLDS:
        try:
            blindfolds[name] = _resolve(name)
        except ValueError:  # not in this torch
            continue
    try:
        for name, obj in list(library.items()) + list(blindfolds.items()):
            make = blind if name in blindfolds else wrap
            w = make(obj, name)
            for fn in functions:  # a default argument holds what it held when the function was defined
                defaults = getattr(fn, "__defaults__", None) if inspect.isfunction(fn) else None
                if defaults and any(d is obj for d in defaults):
                    saved.append((setattr, fn, "__defaults__", defaults))
                    fn.__defaults__ = tuple(w if d is obj else d for d in defaults)
            owner, attr = name.rsplit(".", 1)
            owner = _resolve(owner)
            raw = vars(owner).get(attr) if isinstance(owner, type) else None
            if isinstance(raw, classmethod) and raw.__func__ is getattr(obj, "__func__", None):  # Cls.from_args
                saved.append((setattr, owner, attr, raw))
                setattr(owner, attr, classmethod(wrap(raw.__func__, name)))
            elif isinstance(obj, property):  # a property (cache.nbytes): reading it is the use
                if raw is obj and obj.fget is not None:
                    saved.append((setattr, owner, attr, raw))
                    setattr(owner, attr, property(wrap(obj.fget, name), obj.fset, obj.fdel, obj.__doc__))
                continue
            elif (isinstance(owner, type) and vars(owner).get(attr) is obj   # a method: replace it on its class
                    or inspect.ismodule(owner) and getattr(owner, attr, None) is obj):  # a module's function
                # and every alias of it there, under its own name (sentencepiece's Tokenize is Encode itself)
                for key in [k for k, v in list(vars(owner).items()) if v is obj]:
                    saved.append((setattr, owner, key, obj))
                    setattr(owner, key, w if key == attr else make(obj, f"{name.rsplit('.', 1)[0]}.{key}"))
            spaces = [vars(m) for n, m in list(sys.modules.items()) if n.split(".")[0] == "minimistral" and m]
            spaces += [globals_] if globals_ is not None else []
            for ns in spaces:
                for key, value in list(ns.items()):
                    if value is obj:
                        saved.append((dict.__setitem__, ns, key, value))
                        ns[key] = w
            for c in cells:
                if _has_contents(c) and c.cell_contents is obj:
                    saved.append((setattr, c, "cell_contents", obj))
                    c.cell_contents = w
        with _TorchWatch(rules, advanced, used, origins, strict, host, autograd):
            yield used
    finally:
        for restore, *args in reversed(saved):
            restore(*args)


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:  # an empty cell
        return False


def _same(a, b) -> bool:
    """Whether an argument is still what it was (tensors bit for bit, NaNs included)."""
    try:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
                and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.is_floating_point()
                                                                      and torch.equal(a.isnan(), b.isnan())
                                                                      and torch.equal(a.nan_to_num(), b.nan_to_num())))
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):  # a model: its weights and buffers,
            return _same(getattr(a, "args", None), getattr(b, "args", None)) \
                and _same(dict(a.state_dict()), dict(b.state_dict()))  # and its config (a window set on it, say)
        if type(a) is type(b) and type(a).__eq__ is object.__eq__:  # equality is identity: it cannot tell a copy
            return True
        same = a == b
        return bool(same.all()) if hasattr(same, "all") else bool(same)
    except Exception:  # something that cannot be compared is taken as unchanged
        return True


def _own_copy(x):
    try:
        return copy.deepcopy(x), True
    except Exception:  # an object that cannot be copied (a tokenizer, say) is shared, and not watched
        return x, False


def run_student(student: Callable, case: tuple, forbid: Iterable[str] = ()) -> tuple:
    """Call `student` on its own copies of `case` while watching `forbid`. Returns (result, seen), where seen
    is {"used": names of forbidden things it used, "mutated": indices of the arguments it changed}."""
    copies = [_own_copy(x) for x in case]
    args = tuple(c for c, _ in copies)
    forbid = tuple(forbid)
    if forbid:
        with watching(forbid, getattr(student, "__globals__", None), student, args) as used:
            result = student(*args)
    else:
        used, result = [], student(*args)
    mutated = [i for i, ((c, copied), x) in enumerate(zip(copies, case)) if copied and not _same(c, x)]
    return result, {"used": sorted(set(used)), "mutated": mutated}


TIME_LIMIT = 60.0  # seconds per case: far above any fair answer to a course exercise (they take milliseconds)


class _TooSlow(BaseException):  # not an Exception: a student's `except Exception` must not swallow it
    pass


@contextlib.contextmanager
def _stopped_after(seconds: Optional[float]):
    """Raise _TooSlow inside the block once `seconds` have passed, where the platform lets us interrupt it (a
    POSIX main thread: SIGALRM). Elsewhere (Windows, a worker thread) the block runs to its end, and the caller
    compares the time it took with the limit afterwards."""
    can = (seconds is not None and hasattr(signal, "setitimer")
           and threading.current_thread() is threading.main_thread()
           and signal.getitimer(signal.ITIMER_REAL)[0] == 0)  # someone else's timer (pytest-timeout) is left alone
    if not can:
        yield
        return

    def stop(signum, frame):
        raise _TooSlow()

    before = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def _importable_name(fn: Callable) -> Optional[str]:
    """"minimistral.module.qualname" for a module-level function of the library (labs/references.py's included),
    else None: what a sandbox can resolve by name."""
    fn = getattr(fn, "__func__", fn)
    module, qualname = getattr(fn, "__module__", None) or "", getattr(fn, "__qualname__", None) or ""
    if module.split(".")[0] != "minimistral" or not qualname or "<" in qualname:
        return None
    try:
        return f"{module}.{qualname}" if _resolve(f"{module}.{qualname}") is fn else None
    except ValueError:
        return None


def _call_student(student: Callable, case: tuple, forbid: tuple, reference: Optional[Callable] = None) -> tuple:
    remote = getattr(student, "run_checked", None)  # the grader's proxy: the function runs in a sandbox
    if remote is not None:  # where `_refusing_reference` cannot see: the reference, by name, is forbidden there
        own = _importable_name(reference) if reference is not None else None
        result, seen = remote(tuple(case), list(forbid) + ([own] if own and own not in forbid else []))
        seen = seen if isinstance(seen, dict) else {}
        return result, {"used": [str(u) for u in seen.get("used", [])],
                        "mutated": [int(i) for i in seen.get("mutated", []) if isinstance(i, int)]}
    return run_student(student, case, forbid)


def _rule_broken(seen: dict, names: list, case: tuple) -> Optional[str]:
    if seen["used"]:
        own = [u for u in seen["used"] if u.startswith("minimistral.") and not u.endswith(".__init__")]
        built = [f"a new {u[:-len('.__init__')]}" for u in seen["used"] if u.endswith(".__init__")]
        if own:  # the constructors it used are named too: "it calls X.nbytes (on a new X)"
            on = f" (on {', '.join(built)})" if built else ""
            return f"it calls {', '.join(own)}{on}, the library's own version (not allowed: the exercise is to write it)"
        name = lambda m: repr(names[int(m.group(1)) - 1]) if int(m.group(1)) <= len(names) else m.group(0)  # noqa: E731
        what = ", ".join(re.sub(r"(?<=of )argument (\d+)", name, re.sub(r"^(.+)\.__init__$", r"a new \1", u))
                         for u in seen["used"])  # a forbidden constructor: "a new minimistral.model.Transformer"
        grown = " (a tensor made from that input alone, with more elements than the input: a copy, however " \
                "it is written)" if any(u.startswith(ENLARGED_COPY) for u in seen["used"]) else ""
        return f"it uses {what}, which this exercise does not allow{grown}"
    if seen["mutated"]:
        which = ", ".join(repr(names[i]) if i < len(names) else f"argument {i + 1}" for i in seen["mutated"])
        if all(i < len(case) and isinstance(case[i], torch.Tensor) for i in seen["mutated"]):
            return (f"it changed its input {which} in place (the caller's tensor is not yours to change: "
                    "compute a new result, e.g. out-of-place operations instead of `+=`, `mul_` or slice assignment)")
        if all(i < len(case) and isinstance(case[i], torch.nn.Module) for i in seen["mutated"]):
            return (f"it changed its input {which} (its weights or its `args`) and did not put it back: whatever "
                    "you change on the caller's model, restore before you return")
        return (f"it changed its input {which} in place (the caller's argument is not yours to change: build a new "
                "list, dict or object instead of `append`, `extend`, `pop`, `+=` or item assignment)")
    return None


def _reference_codes(reference: Callable) -> dict:
    """{code object: name} of what calling the reference amounts to: the reference's own function, or, for a
    lambda, the Python function its body calls first (`lambda t: tok.encode(t, bos=False)` is `tok.encode`)."""
    fn = getattr(reference, "__func__", reference)
    if getattr(fn, "__name__", None) == "<lambda>" and hasattr(fn, "__code__"):
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        obj, fn = None, None
        for ins in dis.get_instructions(reference):
            if ins.opname in ("RESUME", "COPY_FREE_VARS", "MAKE_CELL", "PUSH_NULL", "NOP", "CACHE"):
                continue
            if obj is None and ins.opname in ("LOAD_GLOBAL", "LOAD_DEREF", "LOAD_NAME"):
                name = ins.argval
                cell = cells.get(name)
                obj = cell.cell_contents if cell is not None and _has_contents(cell) else \
                    reference.__globals__.get(name, getattr(builtins, name, None))
            elif obj is not None and ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                obj = getattr(obj, ins.argval, None)
            else:
                break
        fn = getattr(obj, "__func__", obj)
    code = getattr(fn, "__code__", None)
    if code is None or getattr(fn, "__name__", None) == "<lambda>":
        return {}
    return {code: getattr(fn, "__qualname__", None) or fn.__name__}


def _code_of(fn) -> Optional[types.CodeType]:
    """The code object a callable runs (through bound methods, functools.wraps and partial), or None."""
    for _ in range(10):
        fn = getattr(fn, "__func__", fn)
        inner = getattr(fn, "__wrapped__", None) or (fn.func if isinstance(fn, functools.partial) else None)
        if inner is None:
            break
        fn = inner
    return getattr(fn, "__code__", None)


def _is_forbidden_itself(student: Callable, reference: Callable, forbidden: dict) -> Optional[str]:
    """Why the student's function IS the reference or a forbidden function (imported under the exercise's name,
    `from ...references import x as my_x`), which no call watch sees; else None. forbidden: {name: object}."""
    own = _code_of(student)
    if own is None:
        return None
    refs = dict(_reference_codes(reference))
    ref_code = _code_of(reference)
    if ref_code is not None:
        refs.setdefault(ref_code, getattr(reference, "__qualname__", "the reference"))
    same = [c for c in refs if c is own]  # identity: an equal function written out by the student is an answer
    if same:
        return f"it is {refs[same[0]]}, the very reference it is compared with (not allowed: the exercise is to write it)"
    for name, obj in forbidden.items():
        if _code_of(obj) is own:
            return f"it is {name}, which this exercise does not allow"
    return None


@contextlib.contextmanager
def _refusing_reference(reference: Callable):
    """Within this block, record (into the yielded list) every call to the reference (`_reference_codes`) made
    by code other than the library's, whatever name the student reaches it by: an answer that returns the
    reference's own result is no answer (the reference passed as the answer itself is not watched: this file calls
    it). Seen through sys.setprofile, so no binding is replaced."""
    codes, seen = _reference_codes(reference), []
    codes = codes if sys.getprofile() is None else {}  # a profiler already running is left alone

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes and frame.f_back is not None \
                and frame.f_back.f_code.co_filename != __file__ and not _called_by_library(frame.f_back):
            seen.append(codes[frame.f_code])
    if codes:
        sys.setprofile(hook)
    try:
        yield seen
    finally:
        if codes:
            sys.setprofile(None)


def _shown_apart(show: Callable, got, want) -> Optional[str]:
    """Where `got` and `want` part, each shown through `show` (a result -> a list of readable strings, such as
    the pieces of a list of token ids); None when `show` cannot read `got`."""
    try:
        mine, theirs = [str(u) for u in show(got)], [str(u) for u in show(want)]
    except Exception:
        return None
    k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))

    def stretch(units):
        return " ".join(units[k:k + 4]) + (" ..." if len(units) > k + 4 else "") if k < len(units) else "(nothing)"
    return (f"the first {k} agree, then yours: {stretch(mine)!r}, expected: {stretch(theirs)!r} "
            f"({len(mine)} in all, expected {len(theirs)})")


def check_function(exercise: str, student: Callable, reference: Callable, cases: Iterable[tuple],
                   hint: str = "", atol: Optional[float] = None, rtol: Optional[float] = None,
                   labels: Optional[Iterable[str]] = None, forbid: Iterable[str] = (),
                   show: Optional[Callable] = None, plain_int: bool = False,
                   raised: Optional[dict] = None, diagnose: Optional[Callable] = None,
                   time_limit: Optional[float] = TIME_LIMIT) -> bool:
    """Call `student` and `reference` on every case and compare the results (type, length, shape and dtype
    first, then the values, with tolerances relative to the reference's size: `atol`/`rtol` when given, else
    the reference dtype's own, TOLERANCES). The student's function runs on its own deep copies of the
    arguments, the reference on the originals; changing an argument in place, or using what `forbid` names
    (see `watching`), fails the case. A case may be a `case(..., label=...)`, or `labels` gives every case's.
    On a mismatch, print which case failed (its label verbatim, else its arguments' shapes and values), how
    the result differs and the hint, never the expected value; except with `show` (a result -> a list of
    readable strings), for exercises whose expected values the learner can see anyway (a tokenizer's pieces)
    and whose numbers say little: then a wrong value is shown as where yours and the expected part. plain_int:
    where the reference returns an int, the answer must be a Python int (a 0-d integer tensor is refused), and
    where it returns a list of ints, the answer's list may hold no tensors.
    `raised` maps an exception's type name ("IndexError") to what that error usually means in this exercise:
    said instead of the hint when the student's function raises it. diagnose(got, want, *args), when given, may
    return a sentence about a wrong value (what kind of mistake it looks like, in words, not the answer); it is
    added to the message, and an error inside it is ignored. time_limit: seconds one case may take (None: no
    limit); a case past it fails as too slow (an endless loop, or a loop over every element), stopped where
    the platform allows (see _stopped_after), else judged when it returns."""
    cases = list(cases)
    labels = list(labels) if labels is not None else None
    forbid = tuple(forbid)
    if labels is not None and len(labels) != len(cases):
        raise ValueError(f"{exercise}: {len(labels)} labels for {len(cases)} cases")
    # resolving each rule now: a misspelt one is the author's error, not the student's
    forbidden = {name: _resolve(name) for name in forbid if name not in _SPECIAL}
    names = _param_names(student, reference)
    itself = _is_forbidden_itself(student, reference, forbidden)
    if itself is not None:
        return _report(FAIL, exercise, f"{itself}. {hint}".strip())
    for n, args in enumerate(cases, 1):
        label = labels[n - 1] if labels else getattr(args, "label", None)
        what = f"case {n} of {len(cases)} ({label if label is not None else _describe_case(student, args, reference)})"
        started = time.perf_counter()
        try:
            local = getattr(student, "run_checked", None) is None  # the grader's sandbox has its own limits
            with _refusing_reference(reference) as called, _stopped_after(time_limit if local else None):
                got, seen = _call_student(student, tuple(args), forbid, reference)
        except _TooSlow:
            return _report(FAIL, exercise, _too_slow(what, time_limit, reference, args, hint, stopped=True))
        except NotImplementedError:
            return _report(TODO, exercise, "not implemented yet")
        except Exception as e:  # a student's bug must not stop the notebook
            meaning = (raised or {}).get(type(e).__name__)  # by name: the grader's sandbox keeps only the name
            return _report(FAIL, exercise, f"{what} raised {type(e).__name__}: {e}. "
                                           f"{meaning or getattr(args, 'hint', '') or hint}".strip())
        if time_limit is not None and time.perf_counter() - started > time_limit:
            return _report(FAIL, exercise, _too_slow(what, time_limit, reference, args, hint, stopped=False))
        if called:
            return _report(FAIL, exercise, f"{what}: it calls {called[0]}, the very reference it is compared with "
                                           f"(not allowed: the exercise is to write it). {hint}".strip())
        broken = _rule_broken(seen, names, tuple(args))
        if broken is not None:
            return _report(FAIL, exercise, f"{what}: {broken}. {hint}".strip())
        want = reference(*args)
        case_atol, case_rtol = getattr(args, "atol", None), getattr(args, "rtol", None)
        why = _mismatch(got, want, atol if case_atol is None else case_atol, rtol if case_rtol is None else case_rtol)
        if why is not None and show is not None:
            why = _shown_apart(show, got, want) or why
        if plain_int and isinstance(want, numbers.Integral) and not isinstance(want, bool) \
                and isinstance(got, torch.Tensor):
            why = f"returned {_form(got)}, expected an int (a Python int, as the exercise asks, not a tensor)"
        if plain_int and isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)) \
                and all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in want):
            held = next((g for g in got if isinstance(g, torch.Tensor)), None)
            if held is not None:
                why = (f"returned a {type(got).__name__} holding {_form(held)}, expected Python ints in it (as the "
                       "exercise asks, not tensors: int(t) turns a 0-d tensor into one)")
        if why is not None:  # a wrong form ("returned ...") gets the general hint, a wrong value the case's
            why_hint = hint if why.startswith("returned") else getattr(args, "hint", "") or hint
            if diagnose is not None and not why.startswith("returned"):
                try:
                    said = diagnose(got, want, *args)
                except Exception:  # a diagnosis is a courtesy: it never turns a failure into an error
                    said = None
                why = f"{why}; {said}" if said else why
            return _report(FAIL, exercise, f"{what}: {why}. {why_hint}".strip())
    return _report(PASS, exercise, f"matches {compared_with(reference)} on {len(cases)} case{'s' if len(cases) != 1 else ''}")


def _too_slow(what: str, limit: float, reference: Callable, args: tuple, hint: str, stopped: bool) -> str:
    started = time.perf_counter()
    try:
        reference(*args)
        theirs = f" (the reference takes {time.perf_counter() - started:.2g} s)"
    except Exception:  # the reference's time is a courtesy
        theirs = ""
    took = f"still running after {limit:g} s, so it was stopped" if stopped else f"took more than {limit:g} s"
    return (f"{what}: {took}{theirs}. Something in it grows faster than it needs to: a loop that never ends, a "
            f"Python loop over every element, or a whole matrix (a Jacobian, an n x n table) built where a vector "
            f"would do? {hint}").strip()


def compared_with(reference: Callable) -> str:
    """What a [PASS] line says the answer was compared with: "the library's rms_norm" for minimistral's own
    code (labs/references.py: "the course's reference ..."), "torch's ..." for PyTorch's, else "the reference
    NAME" (a function written in the notebook or check cell), or just "the reference" for a lambda."""
    fn = getattr(reference, "__func__", reference)
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or ""
    name = getattr(fn, "__name__", "") if "<locals>" in name else name
    if not name or name.startswith("<"):
        return "the reference"
    if module == "minimistral.labs.references":
        return f"the course's reference {name}"
    if module.split(".")[0] == "minimistral" and not module.startswith("minimistral.labs"):
        return f"the library's {name}"
    if module.split(".")[0] == "torch":
        return f"torch's {name}"
    return f"the reference {name}"


def check_value(exercise: str, answer: Callable[[], Any], expected: Any, hint: str = "", atol: float = 1e-6,
                rtol: float = 1e-6, check: Optional[Callable[[Any], bool]] = None, forbid: Iterable[str] = ()) -> bool:
    """Call the student's zero-argument `answer()` and compare its result with `expected` as check_function does
    (or, when `check` is given, pass the result to `check(result) -> bool`); `forbid` as in check_function."""
    try:
        value, seen = _call_student(answer, (), tuple(forbid))
    except NotImplementedError:
        return _report(TODO, exercise, "not implemented yet")
    except Exception as e:
        return _report(FAIL, exercise, f"raised {type(e).__name__}: {e}. {hint}".strip())
    broken = _rule_broken(seen, [], ())
    if broken is not None:
        return _report(FAIL, exercise, f"not yet: {broken}. {hint}".strip())
    if check is not None:
        return _report(PASS, exercise, "correct") if check(value) else _report(FAIL, exercise, f"not yet. {hint}".strip())
    why = _mismatch(value, expected, atol, rtol)
    return _report(PASS, exercise, "correct") if why is None else _report(FAIL, exercise, f"not yet: {why}. {hint}".strip())


# ---- observing a procedure: how a function calls a model --------------------------------------------------------
# Some exercises ask for a procedure (prefill in chunks, decode with the cache) whose result equals a simpler,
# wrong one's (`return model(tokens)` gives the same logits as chunked prefill). Their checks hand the function a
# ModelProbe instead of the model: it behaves as the model, and refuses, by raising ProcedureError with what it saw,
# the first call that breaks the procedure. The refusal is the check's [FAIL] message. The probe travels to the
# grader's sandbox like a model (labs/codec.py lets this one class through), so grading sees the same refusals.


class ProcedureError(RuntimeError):
    """A function called a ModelProbe in a way its exercise rules out; the message says which call and why."""


class BatchLimit(torch.nn.Module):
    """`model`, refusing (ProcedureError) any call on more than `most` sequences at once: a training loop that must
    run each batch in pieces (gradient accumulation, 10.2) gets this in place of the model. It trains as the model
    does (the same parameters, in the same order) and travels to the grader's sandbox like ModelProbe."""

    def __init__(self, model, most: int):
        super().__init__()
        self.model, self.args, self.most = model, model.args, int(most)

    def forward(self, tokens, *args, **kwargs):
        if tokens.shape[0] > self.most:
            raise ProcedureError(f"the model was called on {tokens.shape[0]} sequences at once, but at most {self.most} "
                                 f"are allowed here: run each batch in pieces of at most {self.most}")
        return self.model(tokens, *args, **kwargs)


class ModelProbe(torch.nn.Module):
    """`model` (an mm.Transformer), watched. Every call must pass a cache, the same one each time (from
    probe.new_cache()). chunks=[c1, c2, ...]: call k carries exactly c_k tokens, and there are no more calls.
    decode=True: once the cache holds tokens, each call carries exactly one. positions=N: the calls carry N tokens in
    all, no more (a decoder's N: the prompt plus one per new token but the last, which is never fed back; fewer
    cannot give the right tokens). max_scores=B with length=N: a prefill of N tokens under a budget of B attention
    scores per head: a call of T tokens at cache position p scores T queries against min(p, W) + T keys (the filled
    slots, then its own), and T x that may not exceed B; nor may T be shorter than the longest chunk that fits, unless
    it is all that is left (the fewest calls). `calls` lists (tokens, cache position). The watched model is not handed
    out: `probe.model` raises, and in a copy (the one a check hands the student) the watched model refuses every call
    that does not come through the probe (`probe._watched(...)`, `probe._modules[...]`)."""

    def __init__(self, model, chunks: Optional[list] = None, decode: bool = False, positions: Optional[int] = None,
                 max_scores: Optional[int] = None, length: Optional[int] = None):
        super().__init__()
        self._watched, self.args = model, model.args
        self.chunks, self.decode = None if chunks is None else [int(c) for c in chunks], decode
        self.positions = None if positions is None else int(positions)
        self.max_scores, self.length = None if max_scores is None else int(max_scores), length
        self.calls: list = []
        self.cache = None  # the first call's cache, held (an id() alone could be reused by a later object)
        self._inside = False  # True only while forward runs the watched model

    def __deepcopy__(self, memo):
        # The copy's model is the copy's own, so it can be guarded without touching the caller's model; the guard is
        # a hook, which cannot travel (labs/codec.py), so only copies carry it and the original stays plain.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__dict__, memo))
        hooks = new._watched._forward_pre_hooks.values()
        if not any(getattr(h, "__self__", None) is new for h in hooks):
            new._watched.register_forward_pre_hook(new._refuse_outside)
        return new

    def _refuse_outside(self, module, args):
        if not self._inside:
            raise ProcedureError("the function called the model inside the one the check handed it, going around "
                                 "it: call that model itself, model(tokens, cache=cache), so that every call is seen")

    @property
    def model(self):
        raise ProcedureError("the function reached for the model inside the one the check handed it: call that "
                             "model itself, model(tokens, cache=cache), so that every call is seen")

    def new_cache(self, *args, **kwargs):
        return self._watched.new_cache(*args, **kwargs)

    def forward(self, tokens, cache=None):
        T = int(tokens.shape[-1])
        n = len(self.calls) + 1
        where = f"call {n} to the model ({T} token{'s' if T != 1 else ''}"
        if cache is None:
            raise ProcedureError(f"{where}, no cache) passed no cache: every call must continue one cache, "
                                 "so that no token is computed twice")
        if self.cache is None:
            self.cache = cache
        elif cache is not self.cache:
            raise ProcedureError(f"{where}) passed a different cache from call 1's: a new cache forgets every "
                                 "token before it")
        pos = int(cache.pos)
        if self.chunks is not None and n > len(self.chunks):
            raise ProcedureError(f"{where}) came after all {len(self.chunks)} chunks were given: one call per chunk")
        if self.chunks is not None and T != self.chunks[n - 1]:
            raise ProcedureError(f"{where}) should have carried chunk {n}, of {self.chunks[n - 1]} "
                                 f"token{'s' if self.chunks[n - 1] != 1 else ''}")
        if self.decode and pos > 0 and T != 1:
            raise ProcedureError(f"{where}) came after the cache already held {pos} tokens: once the prompt is "
                                 "in the cache, a decoding step gives the model only what it has not seen")
        fed = sum(t for t, _ in self.calls)
        if self.positions is not None and fed + T > self.positions:
            raise ProcedureError(f"{where}) came after {fed} tokens had gone through the model, and this case needs "
                                 f"{self.positions} in all: the last new token never needs to go through the model "
                                 "(nothing is sampled after it)")
        if self.max_scores is not None:
            self._within_budget(where, T, pos)
        self.calls.append((T, pos))
        self._inside = True
        try:
            return self._watched(tokens, cache=cache)
        finally:
            self._inside = False

    def _within_budget(self, where: str, T: int, pos: int):
        W, B = self.args.sliding_window, self.max_scores
        cached = pos if W is None else min(pos, W)
        if T * (cached + T) > B:
            raise ProcedureError(f"{where}, {cached} keys cached) scores {T} queries against {cached + T} keys: "
                                 f"{T * (cached + T):,} scores, over the budget of {B:,}")
        left = None if self.length is None else int(self.length) - pos
        if left is not None and T < left and (T + 1) * (cached + T + 1) <= B:
            raise ProcedureError(f"{where}, {cached} keys cached) is shorter than the budget of {B:,} scores allows, "
                                 "and more tokens were left: each chunk should be as long as the budget lets it be")
