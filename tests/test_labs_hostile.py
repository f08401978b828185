"""Hostile submissions, one per attack class of issue 17, graded in ONE run with honest and unsolved ones.

Every hostile one must get no credit it did not earn and be flagged; every honest one keeps its full score and
its file; nothing a sandbox started outlives the grader. Needs root and mount namespaces (the grader refuses
to grade without them, which test_grader_refuses_without_isolation covers from the other side).
"""

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from minimistral.labs import sandbox
from test_labs import exercise_nb, read_csv, run_labs, write

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0 or not sandbox.probe().namespaces,
                                 reason="the sandbox needs root and mount namespaces (run in the container)")]


def with_body(body1=None, body2=None, extra=(), check1=None, drop_checks=False, dup_check=False):
    """The synthetic lab, solved, with exercise 99.1's body (and 99.2's) replaced by hostile code."""
    nb = exercise_nb(*extra)
    if body1:
        nb.cells[-5].source = "def double(x):\n    '''Twice x.'''\n" + body1
    if body2:
        nb.cells[-3].source = "def answer():\n" + body2
    if check1:
        nb.cells[-4].source = check1
    if dup_check:
        nb.cells.insert(-3, new_code_cell(nb.cells[-4].source))
    if drop_checks:
        nb.cells = [c for c in nb.cells if "check_" not in c.source or "import" in c.source]
    return nb


def indent(code):
    return "".join("    " + line + "\n" for line in code.strip("\n").split("\n"))


SOLVED_NORM = "    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w"


def norm_nb(body):
    """A second source notebook, whose reference is a library function (for the library-call rule)."""
    nb = exercise_nb()
    nb.cells = [new_code_cell("import torch\nfrom minimistral.labs.checks import check_function\n"
                              "from minimistral.norm import rms_norm"),
                new_code_cell("def my_rms_norm(x, w):\n    ### BEGIN SOLUTION\n" + body + "\n    ### END SOLUTION"),
                new_code_cell('_ = check_function("98.1 rms_norm", my_rms_norm, lambda x, w: rms_norm(x, w, 1e-5),\n'
                              '                   cases=[(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)),'
                              ' torch.ones(4))])')]
    return nb


def hostile(source: Path, other: Path, csv: Path) -> dict:
    read_src = indent(f"""
import glob
for p in [{str(source)!r}] + glob.glob('/work/*/notebooks/*.ipynb') + glob.glob({str(other.parent.parent) + '/*/*'!r}):
    try:
        open(p).read()
        return 2 * x  # the solution, read from the instructor's notebook
    except OSError:
        pass
return 0""")
    write_out = indent(f"""
import os
for p in [{str(source.parent / 'planted.txt')!r}, '/root/planted.txt', {str(csv.parent / 'planted.txt')!r},
          '/etc/planted.txt', '/var/tmp/planted.txt']:
    try:
        open(p, 'w').write('x')
    except OSError:
        pass
return 0""")
    tamper = indent(f"""
import glob, os
victims = [{str(other)!r}]
for cmd in glob.glob('/proc/*/cmdline'):
    try:
        victims += [a for a in open(cmd).read().split(chr(0)) if a.endswith('.ipynb')]
    except OSError:
        pass
for v in victims:
    try:
        open(v, 'w').write('{{}}')
    except OSError:
        pass
return 0""")
    forge = indent("""
import os, struct, json
fake = b'{"value": 0}'
for fd in range(3, 20):
    try:
        os.write(fd, struct.pack('>Q', len(fake) + 4) + struct.pack('>I', len(fake)) + fake)
    except OSError:
        pass
return 0""")
    kill = indent("""
import os, signal
for pid in (os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
os.kill(-1, signal.SIGKILL)""")
    outlive = indent(f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(6)
        try:
            open({str(csv)!r}, 'a').write('=1+1,forged\\n')
        finally:
            os._exit(0)
    os._exit(0)
return 0""")
    shm = indent("""
with open('/dev/shm/fill', 'wb') as f:
    for _ in range(2048):
        f.write(b'x' * (1 << 20))
return 0""")
    forks = indent("""
import os
kids = []
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        import time
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
return -len(kids)""")
    memory = indent("b = bytearray(16 << 30)\nreturn 0")
    cpu = indent("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
    flood = indent("for _ in range(1000):\n    print('x' * 100_000)\nreturn 0")
    return {
        "forged_output": with_body(indent("print('[PASS] 99.1 double: matches the library on 3 cases')\nreturn 0")),
        "patched_checker": with_body(indent(
            "import minimistral.labs.checks as c\nc._close = lambda *a: True\n"
            "c.check_function = lambda *a, **k: print('[PASS] 99.1 double: ok')\nreturn 0")),
        "patched_reference": with_body(indent(
            "import minimistral.norm as n\nn.RMSNorm.forward = lambda self, x: x\nreturn 0")),
        "edited_check": with_body(indent("return 0"), check1='_ = check_function("99.1 double", double, double, '
                                  'cases=[(1,)])\nprint("[PASS] 99.1 double: ok")'),
        "deleted_check": with_body(indent("return 0"), drop_checks=True),
        "duplicated_check": with_body(indent("return 0"), dup_check=True),
        "reads_solutions": with_body(read_src),
        "writes_outside": with_body(write_out),
        "tampers_other": with_body(tamper),
        "forges_result": with_body(forge),
        "kills_runner": with_body(kill),
        "outlives_grader": with_body(outlive),
        "fills_shm": with_body(shm),
        "fork_bomb": with_body(forks),
        "memory_hog": with_body(memory),
        "cpu_hog": with_body(cpu),
        "floods_output": with_body(flood),
        "=HYPERLINK(1)": with_body(indent("raise ValueError('=HYPERLINK(\"http://x\",\"y\")')"),
                                       body2=indent("return '=cmd|\\' /C calc\\'!A0'")),
    }


def test_hostile_submissions_graded_with_honest_ones(tmp_path, monkeypatch):
    (tmp_path / "source").mkdir()
    source = write(exercise_nb(), tmp_path / "source" / "99_lab.ipynb")
    write(norm_nb(SOLVED_NORM), tmp_path / "source" / "98_norm.ipynb")
    subs = tmp_path / "subs"
    out = tmp_path / "grades"
    out.mkdir()
    csv = out / "grades.csv"
    honest = {"good": exercise_nb(), "good2": exercise_nb(), "todo": exercise_nb(solved=False)}
    other = subs / "good2" / "99_lab.ipynb"
    cases = {**honest, **hostile(source, other, csv)}
    for name, nb in cases.items():
        (subs / name).mkdir(parents=True)
        write(nb, subs / name / "99_lab.ipynb")
    before = {name: (subs / name / "99_lab.ipynb").read_bytes() for name in honest}
    for name, body in (("norm_honest", SOLVED_NORM), ("norm_library", "    return rms_norm(x, w, 1e-5)")):
        (subs / name).mkdir()
        write(norm_nb(body), subs / name / "98_norm.ipynb")
    monkeypatch.chdir(subs)  # relative paths in the CSV: the folder name "=HYPERLINK(1)" starts a cell

    t0 = time.monotonic()
    r = run_labs("grade", ".", "--source", source.parent, "--jobs", "1", "--max-alive", "24",
                 "--timeout-cell", "8", "--timeout-notebook", "60", "--max-output", "1000000",
                 "--max-memory", "2048", "--csv", csv)
    seconds = time.monotonic() - t0
    rows = read_csv(csv)
    name_of = lambda row: Path(row["file"]).parent.name.removeprefix("'")  # noqa: E731
    by = {(name_of(row), row["exercise"]): row for row in rows}
    status = {name_of(row): row["notebook_status"] for row in rows}
    flags = {name_of(row): row["flags"] for row in rows}
    assert r.returncode == 1, r.stdout + r.stderr

    # honest submissions: full marks, untouched files, no flags
    for name in ("good", "good2"):
        assert by[name, "99.1 double"]["result"] == "pass" and by[name, "99.2 answer"]["result"] == "pass", r.stdout
        assert status[name] == "ok" and flags[name] == "", (name, flags[name])
    assert by["todo", "99.1 double"]["result"] == "todo" and by["todo", "99.2 answer"]["result"] == "todo"
    for name, data in before.items():
        assert (subs / name / "99_lab.ipynb").read_bytes() == data, f"{name}'s submission was modified"

    # every hostile one: exercise 99.1 earns nothing, the submission is flagged
    for name in cases:
        if name in honest:
            continue
        assert by[name, "99.1 double"]["result"] != "pass", (name, by[name, "99.1 double"])
        if name != "=HYPERLINK(1)":  # that one attacks the CSV, where it is escaped (below)
            assert status[name] != "ok" and flags[name], (name, status[name], flags[name])
    # each exercise graded exactly once, from the source's check cells
    assert sum(1 for row in rows if Path(row["file"]).parent.name == "duplicated_check") == 2
    assert "check-duplicated: 99.1 double" in flags["duplicated_check"]
    assert "check-edited: 99.1 double" in flags["edited_check"]
    assert "check-deleted: 99.1 double" in flags["deleted_check"] and by["deleted_check", "99.2 answer"][
        "result"] == "pass"
    assert "patched minimistral.labs.checks" in flags["patched_checker"]
    assert "patched minimistral.norm.RMSNorm.forward" in flags["patched_reference"]
    assert by["norm_honest", "98.1 rms_norm"]["result"] == "pass" and status["norm_honest"] == "ok"
    assert by["norm_library", "98.1 rms_norm"]["result"] == "library"
    assert "minimistral.norm.rms_norm" in by["norm_library", "98.1 rms_norm"]["hint"]
    assert ".ipynb" in flags["reads_solutions"]
    assert "planted" in flags["writes_outside"]
    assert not list(source.parent.glob("planted*")) and not list(out.glob("planted*"))
    assert "/proc/" in flags["tampers_other"]
    assert "protocol" in flags["forges_result"] or "died" in flags["forges_result"]
    assert "os.kill (-1, 9)" in flags["kills_runner"] and by["kills_runner", "99.2 answer"]["result"] == "pass"
    assert "/dev/shm" in flags["fills_shm"]
    assert "os.fork" in flags["fork_bomb"]
    assert "memory-limit" in flags["memory_hog"]
    assert "timeout" in flags["cpu_hog"] and by["cpu_hog", "99.2 answer"]["result"] == "pass"
    assert "output-limit" in flags["floods_output"]
    # the other exercises of a hostile submission are still graded (a restarted sandbox)
    assert by["memory_hog", "99.2 answer"]["result"] == "pass"

    # nothing survives the grader: no process of a sandbox account, and the late writer never writes
    uids = sandbox.ensure_accounts(24)
    assert not [p for uid, _ in uids for p in sandbox.processes_of(uid)]
    text = csv.read_text()
    time.sleep(7)
    assert csv.read_text() == text
    # formula injection: nothing in the CSV starts like a formula
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert any(row["file"].startswith("'=HYPERLINK(1)") for row in rows)
    assert seconds < 300, seconds


def test_grader_refuses_without_isolation(tmp_path, monkeypatch):
    src = write(exercise_nb(), tmp_path / "99_lab.ipynb")
    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Isolation(False, False, "", ["not running as root"]))
    r = run_labs("grade", src, "--source", tmp_path)
    assert r.returncode == 2 and "not running as root" in r.stderr and "container" in r.stderr
    assert "Nothing was graded" in r.stderr

