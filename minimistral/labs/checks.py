"""Automatic checks for the course's exercises.

Every exercise ends with one call here. It prints exactly one verdict line that starts with a fixed tag,
so people read it at a glance:

    [PASS] 02.1 rms_norm: matches the library on 5 cases
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

import contextlib
import inspect
import math
import numbers
import os
import re
from typing import Any, Callable, Iterable, Optional

import torch

PASS, FAIL, TODO = "[PASS]", "[FAIL]", "[TODO]"
VERDICT = re.compile(r"^\[(PASS|FAIL|TODO)\] (\d\d\.\d+ [^:\n]+): ?(.*)$", re.M)
_sinks: list[list] = []  # the grader's collectors (see collect_verdicts)


class CheckFailed(AssertionError):
    """A check's verdict was [FAIL] or [TODO]; the line above the traceback says why."""


def verdict_line(tag: str, exercise: str, message: str) -> str:
    """The one writer of the verdict format: `[PASS] 02.1 rms_norm: message` (one line)."""
    return f"{tag} {exercise}: {' '.join(str(message).split())}"


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
        _sinks[-1].append((tag.strip("[]"), exercise, " ".join(str(message).split())))
        return tag == PASS
    if tag != PASS and raises():
        raise CheckFailed(f"{exercise}: {message}")
    return tag == PASS


# ---- comparing an answer with the reference ------------------------------------------------------------------
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
    elif want != 0 and (got > 0) != (want > 0):
        return f"{word} (even its sign is wrong)"
    return word


def _index(flat: int, shape) -> tuple:
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    return tuple(reversed(idx))


def _tensor_mismatch(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> Optional[str]:
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
    wrong = ~(err <= atol * scale + rtol * w.abs()) & ~((g == w) | (g.isnan() & w.isnan()))
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
    wf, gf = w.flatten(), g.flatten()
    c = (wf.conj() @ gf) / (wf.conj() @ wf) if float((wf.abs() ** 2).sum()) > 0 else None
    if c is not None and not want.is_complex() and abs(float(c)) > 1e-3 and float((gf - c * wf).abs().max()) <= atol * scale + 1e-3 * scale \
            and abs(float(c) - 1) > 1e-3:
        msg += f"; the result is the expected one times a constant {'larger' if abs(float(c)) > 1 else 'smaller'}" \
               f" than 1 (a missing or extra scale factor?)"
    elif not want.is_complex() and want.numel() > 1 and torch.allclose(gf.sort().values, wf.sort().values,
                                                                      atol=atol * scale, rtol=rtol):
        msg += "; the right numbers in the wrong places (an axis, an order or a transpose?)"
    return msg


def _mismatch(got, want, atol: float, rtol: float) -> Optional[str]:
    """None when `got` matches `want`; otherwise how it differs, without giving `want` away."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"returned {_form(got)}, expected a tensor of shape {tuple(want.shape)} and dtype {want.dtype}"
        return _tensor_mismatch(got, want, atol, rtol)
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"returned {_form(got)}, expected a {type(want).__name__} of {len(want)}"
        if len(got) != len(want):
            return f"returned a {type(got).__name__} of {len(got)}, expected {len(want)} elements"
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
    r = repr(x)
    return r if len(r) <= 60 and "\n" not in r else type(x).__name__


def _describe_case(fn: Callable, case: tuple) -> str:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = params if len(params) >= len(case) else [None] * len(case)
    return ", ".join(_input(x) if name is None else f"{name}={_input(x)}" for name, x in zip(names, case))


def check_function(exercise: str, student: Callable, reference: Callable, cases: Iterable[tuple],
                   hint: str = "", atol: float = 1e-5, rtol: float = 1e-4,
                   labels: Optional[Iterable[str]] = None) -> bool:
    """Call `student(*case)` and `reference(*case)` on every case and compare the results (type, length, shape
    and dtype first, then the values, with tolerances relative to the reference's size).
    On a mismatch, print which case failed (its description from `labels`, else its arguments' shapes and
    values), how the result differs and the hint, never the expected value."""
    cases = list(cases)
    labels = list(labels) if labels is not None else None
    if labels is not None and len(labels) != len(cases):
        raise ValueError(f"{exercise}: {len(labels)} labels for {len(cases)} cases")
    for n, case in enumerate(cases, 1):
        what = f"case {n} of {len(cases)} ({labels[n - 1] if labels else _describe_case(student, case)})"
        try:
            got = student(*case)
        except NotImplementedError:
            return _report(TODO, exercise, "not implemented yet")
        except Exception as e:  # a student's bug must not stop the notebook
            return _report(FAIL, exercise, f"{what} raised {type(e).__name__}: {e}. {hint}".strip())
        want = reference(*case)
        why = _mismatch(got, want, atol, rtol)
        if why is not None:
            return _report(FAIL, exercise, f"{what}: {why}. {hint}".strip())
    return _report(PASS, exercise, f"matches the library on {len(cases)} cases")


def check_value(exercise: str, answer: Callable[[], Any], expected: Any, hint: str = "", atol: float = 1e-6,
                rtol: float = 1e-6, check: Optional[Callable[[Any], bool]] = None) -> bool:
    """Call the student's zero-argument `answer()` and compare its result with `expected` as check_function does
    (or, when `check` is given, pass the result to `check(result) -> bool`)."""
    try:
        value = answer()
    except NotImplementedError:
        return _report(TODO, exercise, "not implemented yet")
    except Exception as e:
        return _report(FAIL, exercise, f"raised {type(e).__name__}: {e}. {hint}".strip())
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


class ModelProbe(torch.nn.Module):
    """`model` (an mm.Transformer), watched. Every call must pass a cache, the same one each time (from
    probe.new_cache()). chunks=[c1, c2, ...]: call k carries exactly c_k tokens, and there are no more calls.
    decode=True: once the cache holds tokens, each call carries exactly one. `calls` lists (tokens, cache position)."""

    def __init__(self, model, chunks: Optional[list] = None, decode: bool = False):
        super().__init__()
        self.model, self.args = model, model.args
        self.chunks, self.decode = None if chunks is None else [int(c) for c in chunks], decode
        self.calls: list = []
        self.cache = None  # the first call's cache, held (an id() alone could be reused by a later object)

    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

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
        self.calls.append((T, pos))
        return self.model(tokens, cache=cache)
