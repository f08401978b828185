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


def _close(a, b, atol, rtol) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype and not (a.is_floating_point() and b.is_floating_point()):
            return False
        if a.dtype == torch.bool or not a.is_floating_point():
            return torch.equal(a, b)
        return torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol, equal_nan=False)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y, atol, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= atol + rtol * abs(float(b))
        except (TypeError, ValueError):
            return False
    return a == b


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def check_function(exercise: str, student: Callable, reference: Callable, cases: Iterable[tuple],
                   hint: str = "", atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Call `student(*case)` and `reference(*case)` on every case and compare the results.
    On a mismatch, print which case failed (by number and shapes) and the hint, never the expected value."""
    cases = list(cases)
    for n, case in enumerate(cases, 1):
        try:
            got = student(*case)
        except NotImplementedError:
            return _report(TODO, exercise, "not implemented yet")
        except Exception as e:  # a student's bug must not stop the notebook
            return _report(FAIL, exercise, f"case {n} of {len(cases)} raised {type(e).__name__}: {e}. {hint}".strip())
        want = reference(*case)
        if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape != want.shape:
            return _report(FAIL, exercise, f"case {n}: shape {tuple(got.shape)}, expected {tuple(want.shape)}. {hint}".strip())
        if not _close(got, want, atol, rtol):
            return _report(FAIL, exercise, f"case {n} of {len(cases)} gives a different result "
                                           f"({_describe(got)}). {hint}".strip())
    return _report(PASS, exercise, f"matches the library on {len(cases)} cases")


def check_value(exercise: str, answer: Callable[[], Any], expected: Any, hint: str = "", atol: float = 1e-6,
                rtol: float = 1e-6, check: Optional[Callable[[Any], bool]] = None) -> bool:
    """Call the student's zero-argument `answer()` and compare its result with `expected`
    (or, when `check` is given, pass the result to `check(result) -> bool`)."""
    try:
        value = answer()
    except NotImplementedError:
        return _report(TODO, exercise, "not implemented yet")
    except Exception as e:
        return _report(FAIL, exercise, f"raised {type(e).__name__}: {e}. {hint}".strip())
    ok = check(value) if check is not None else _close(value, expected, atol, rtol)
    return _report(PASS, exercise, "correct") if ok else _report(FAIL, exercise, f"not yet. {hint}".strip())
