"""Issue 26, a grader that proves itself: the instructor's own notebook is graded in the same sandboxes, and if
it does not score full marks nothing is reported and the command exits non-zero with the reason; a Python
environment under /tmp (which each sandbox replaces by a private one) still works; the sandbox accounts and
cgroups are a fixed set that `labs cleanup` removes."""

import os
import pwd
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from minimistral import labs
from minimistral.labs import sandbox

ROOT = Path(__file__).resolve().parents[1]
CHECK_IMPORT = "from minimistral.labs.checks import check_function, check_value"


def isolated() -> bool:
    return sandbox.probe().full


needs_sandbox = pytest.mark.skipif(not isolated(), reason="needs root and mount namespaces (the real sandbox)")


def lab(solution: str, setup: str = "") -> nbformat.NotebookNode:
    """A one-exercise source notebook: `answer()` must return 42."""
    cells = [new_markdown_cell("# A lab"), new_code_cell(CHECK_IMPORT)]
    if setup:
        cells.append(new_code_cell(setup))
    cells += [new_code_cell("def answer():\n    ### BEGIN SOLUTION\n" + solution + "\n    ### END SOLUTION"),
              new_code_cell('_ = check_value("99.1 answer", answer, 42, hint="the answer")')]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def course(tmp_path, nb) -> tuple[Path, Path]:
    """(source folder, an honest submission: a copy of the source) for the notebook."""
    src = tmp_path / "source"
    src.mkdir()
    nbformat.write(nb, src / "99_lab.ipynb")
    sub = tmp_path / "alice"
    sub.mkdir()
    shutil.copy2(src / "99_lab.ipynb", sub / "99_lab.ipynb")
    return src, sub / "99_lab.ipynb"


def grade(python, src, sub, csv, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(python), "-m", "minimistral.labs", "grade", str(sub), "--source", str(src), "--jobs", "1",
                           "--max-alive", "2", "--timeout-cell", "60", "--csv", str(csv)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd="/")


@needs_sandbox
@pytest.mark.slow
def test_a_grader_whose_sandbox_cannot_run_the_source_stops_with_the_reason(tmp_path):
    """The solution reads a file under /tmp: fine in the grader, absent in the sandbox's private /tmp. Before,
    every honest submission was graded as failing and the command exited 0."""
    data = tmp_path / "answer.txt"
    data.write_text("42")
    src, sub = course(tmp_path, lab(f"    return int(open({str(data)!r}).read())"))
    csv = tmp_path / "grades.csv"
    r = grade(sys.executable, src, sub, csv)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "could not prove itself" in r.stderr and "99_lab.ipynb" in r.stderr
    assert "FileNotFoundError" in r.stderr and str(data) in r.stderr  # what the sandbox could not reach, and why
    assert "0/1 exercises passed" in r.stderr
    assert not csv.exists() and "99.1 answer" not in r.stdout  # no grade reported


@needs_sandbox
@pytest.mark.slow
def test_a_python_environment_under_tmp_is_seen_by_the_sandbox(tmp_path):
    """The issue's case: a virtual environment in a scratch folder under /tmp, holding a package the solution
    imports when called. Before, the sandbox's private /tmp hid it (ModuleNotFoundError) and the honest
    submission failed; now the environment is bound back into the sandbox, and the grader proves itself."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "mm_scratch_dep.py").write_text("ANSWER = 42\n")
    src, sub = course(tmp_path, lab("    import mm_scratch_dep\n    return mm_scratch_dep.ANSWER"))
    csv = tmp_path / "grades.csv"
    r = grade(python, src, sub, csv)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = csv.read_text().splitlines()
    assert any("99.1 answer,pass" in row for row in rows), rows


def test_self_check_failures_name_the_exercise_and_the_unseen_folders(tmp_path, monkeypatch):
    from minimistral.labs.grade import Graded, Row
    from minimistral.labs.report import self_check_failures
    ok = Graded("/s/01_a.ipynb", "ok", "", [Row("01.1 a", "pass")], 1.0)
    assert self_check_failures([ok], []) == []
    bad = Graded("/s/03_rope.ipynb", "ok", "definitions: cell 4: ModuleNotFoundError: No module named 'x'",
                 [Row("03.1 rope", "error", "the check raised ModuleNotFoundError: No module named 'numpy.ctypeslib'"),
                  Row("03.2 rope", "pass")], 1.0)
    hidden = tmp_path / "my_modules"  # on sys.path by PYTHONPATH, say: not a site-packages the grader keeps
    hidden.mkdir()
    monkeypatch.setattr(sys, "path", [str(hidden), *sys.path])
    lines = self_check_failures([ok, bad], keep=sandbox.visible_paths([])[1])
    text = "\n".join(lines)
    assert "03_rope.ipynb: 1/2 exercises passed" in text and "numpy.ctypeslib" in text and "03.1 rope" in text
    assert str(hidden.resolve()) in text and "01_a" not in text
    assert self_check_failures([Graded("/s/05.ipynb", "died", "the sandbox died", [], 0.0)], [])  # no rows: failed


def test_cleanup_removes_the_accounts_cgroups_and_lock(tmp_path):
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    prefix, cg = "mmcleantest", "minimistral-cleantest"
    lock = tmp_path / "grade.lock"
    try:
        accounts = sandbox.ensure_accounts(3, prefix=prefix)
        assert accounts == sandbox.ensure_accounts(3, prefix=prefix)  # reused, not made again
        assert [pwd.getpwnam(f"{prefix}{i}").pw_uid for i in range(3)] == [u for u, _ in accounts]
        made = []
        for base in (f"/sys/fs/cgroup/pids/{cg}", f"/sys/fs/cgroup/{cg}"):
            try:
                os.makedirs(f"{base}/slot0")
                made.append(base)
            except OSError:
                pass
        lock.write_text("")
        removed = sandbox.cleanup(prefix=prefix, cg_name=cg, lock=str(lock))
        assert [r for r in removed if r.startswith("account")] == [f"account {prefix}{i}" for i in range(3)]
        assert [r for r in removed if r.startswith("cgroup")] == [f"cgroup {b}" for b in made]
        assert f"lock {lock}" in removed and not lock.exists()
        for i in range(3):
            with pytest.raises(KeyError):
                pwd.getpwnam(f"{prefix}{i}")
        assert not any(os.path.exists(b) for b in made)
        assert sandbox.cleanup(prefix=prefix, cg_name=cg, lock=str(lock)) == []  # twice: nothing left
    finally:
        for i in range(3):
            subprocess.run(["userdel", f"{prefix}{i}"], capture_output=True)


def test_cleanup_is_refused_while_a_grader_runs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    import fcntl
    lock = tmp_path / "grade.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        pid = os.fork()
        if pid == 0:  # another process: flock conflicts across open file descriptions
            try:
                sandbox.cleanup(prefix="mmcleantest", cg_name="minimistral-cleantest", lock=str(lock))
                os._exit(1)
            except RuntimeError as e:
                os._exit(0 if "is running" in str(e) and str(lock) in str(e) else 2)
            except BaseException:
                os._exit(3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_the_accounts_are_a_bounded_set():
    with pytest.raises(ValueError, match="mmgrade0 .. mmgrade255"):
        sandbox.ensure_accounts(sandbox.MAX_SLOTS + 1)
    from minimistral.labs.cli import MAX_ALIVE, MAX_JOBS
    assert MAX_JOBS * MAX_ALIVE == sandbox.MAX_SLOTS


def test_cleanup_command_prints_what_it_removed(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "cleanup", lambda: ["account mmgrade0", "lock /run/lock/x"])
    assert labs.main(["cleanup"]) == 0
    out = capsys.readouterr().out
    assert "removed account mmgrade0" in out and "removed 2 item(s)" in out
    monkeypatch.setattr(sandbox, "cleanup", lambda: (_ for _ in ()).throw(RuntimeError("a `labs grade` is running")))
    assert labs.main(["cleanup"]) == 2
    assert capsys.readouterr().err.strip() == "error: a `labs grade` is running"
