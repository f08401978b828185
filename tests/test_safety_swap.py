"""Issue 26, checkpoints that are one thing: a crash at ANY step of a save (each mkdir, rename, unlink, rmdir,
fsync) leaves, once the next load or save has recovered, the old checkpoint byte for byte or the complete new
one; a second writer is refused naming the holder; a folder mixing two saves is refused naming the file; the
order write -> fsync -> rename is observed, so a durable save can be told from one that is not."""

import os
import time
import warnings
from pathlib import Path

import pytest
import torch

import minimistral as mm
from minimistral.storage import atomic, checkpoints
from minimistral.storage.atomic import FolderLocked, folder_lock
from minimistral.weights import MANIFEST, CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = dict(dim=16, n_layers=2, head_dim=4, hidden_dim=32, n_heads=4, n_kv_heads=2, vocab_size=50,
            sliding_window=8, max_seq_len=32, dtype="float32")
STEPS = ("mkdir", "rename", "replace", "unlink", "rmdir", "fsync")  # every file-system step a save takes


def model(seed):
    return mm.Transformer(mm.ModelArgs(**ARGS)).init_weights("normal", std=0.1, seed=seed).eval()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "finished / removed the interrupted save": what this test provokes
        return mm.load_checkpoint(path, progress=False)


def same_weights(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


class Faults:
    """Counts the save's file-system steps; at step number `at` it crashes the process (os._exit: no
    `finally`, no `except` runs, like SIGKILL) or raises OSError (a failing disk: the save's own handlers run)."""

    def __init__(self, monkeypatch, at: int, crash: bool):
        self.n, self.at, self.crash, self.hit = 0, at, crash, None
        for name in STEPS:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def step(*a, **k):
            self.n += 1
            if self.n == self.at:
                self.hit = name
                if self.crash:
                    os._exit(70 + STEPS.index(name))
                raise OSError(5, f"injected failure at {name} (step {self.at})")
            return real(*a, **k)
        return step


def old_checkpoint(path: Path, layout: str):
    m = model(1)
    if layout == "hf":
        mm.save_checkpoint(m, path, max_shard_size=12000, progress=False)  # index + several shards
    else:
        mm.save_checkpoint(m, path, format="consolidated", progress=False)
    (path / "NOTES.md").write_text("the user's own notes")
    return m


def new_format(layout):  # the other layout: the swap must also remove the old layout's files
    return dict(format="consolidated") if layout == "hf" else dict(max_shard_size=12000)


def new_listing(tmp_path, layout) -> list:
    ref = tmp_path / "reference"
    mm.save_checkpoint(model(2), ref, progress=False, **new_format(layout))
    return sorted([p.name for p in ref.iterdir()] + ["NOTES.md"])


def crash_child(path, at, layout, monkeypatch) -> int:
    """Fork; the child saves model(2) over `path` and crashes at step `at`. Returns the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            Faults(monkeypatch, at, crash=True)
            mm.save_checkpoint(model(2), path, overwrite=True, progress=False, **new_format(layout))
            code = 0  # finished without reaching step `at`
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("layout, recover_by", [("hf", "load"), ("consolidated", "save")])
def test_a_crash_at_every_step_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch, layout, recover_by):
    """Kill the save at step 1, 2, 3, ... until it completes: after each, recovery (by the next load, or by
    the next save into the folder) shows exactly the old checkpoint or exactly the new one."""
    want_new = new_listing(tmp_path, layout)
    new = model(2)
    outcomes, steps_hit = {"old": 0, "new": 0}, set()
    at = 0
    while True:
        at += 1
        path = tmp_path / f"ckpt{at}"
        old = old_checkpoint(path, layout)
        before = snapshot(path)
        code = crash_child(path, at, layout, monkeypatch)
        if code == 0:
            break
        assert code >= 70, f"the child failed before the injected crash (exit {code})"
        steps_hit.add(STEPS[code - 70])
        if recover_by == "load":
            got = load(path)
        else:  # the next save recovers first; it is refused (no overwrite) and then tells which state it found
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(FileExistsError, match="not empty"):
                    mm.save_checkpoint(model(3), path, progress=False)
            got = load(path)
        assert not [p.name for p in path.iterdir() if p.name.startswith(".")], f"step {at}: leftovers"
        if same_weights(got, old):
            assert snapshot(path) == before, f"crash at step {at}: the old checkpoint is not byte-identical"
            outcomes["old"] += 1
        else:
            assert same_weights(got, new), f"crash at step {at}: neither the old nor the new weights"
            assert sorted(p.name for p in path.iterdir()) == want_new, f"crash at step {at}"
            assert (path / "NOTES.md").read_text() == "the user's own notes"
            outcomes["new"] += 1
    injected = at - 1
    print(f"\n{layout}, recovered by {recover_by}: {injected} crashes injected, one at each step "
          f"({', '.join(sorted(steps_hit))}); {outcomes['old']} left the old checkpoint, {outcomes['new']} the new")
    assert injected >= 20 and outcomes["old"] and outcomes["new"]
    assert {"mkdir", "rename", "replace", "fsync", "rmdir", "unlink"} <= steps_hit


@pytest.mark.parametrize("layout", ["hf", "consolidated"])
def test_a_failure_at_every_step_leaves_the_old_or_the_new_checkpoint_at_once(tmp_path, monkeypatch, layout):
    """The same steps failing with OSError (the save's handlers run): the save raises, and the folder already
    holds the old checkpoint byte for byte, or the new one complete (the failure came after the commit)."""
    want_new = new_listing(tmp_path, layout)
    new, at, counts = model(2), 0, {"old": 0, "new": 0}
    while True:
        at += 1
        path = tmp_path / f"ckpt{at}"
        old = old_checkpoint(path, layout)
        before = snapshot(path)
        with monkeypatch.context() as m:
            faults = Faults(m, at, crash=False)
            try:
                mm.save_checkpoint(new, path, overwrite=True, progress=False, **new_format(layout))
            except OSError as e:
                assert f"step {at}" in str(e)
            else:
                if faults.hit is None:  # the save took fewer steps than `at`: every step has been tried
                    break  # (a failure the save absorbs, e.g. mkdir of a folder that exists, falls through below)
        (path / atomic.LOCK_NAME).unlink(missing_ok=True)  # left only when its own unlink failed: harmless
        if snapshot(path) == before:
            counts["old"] += 1
            assert same_weights(load(path), old)
        else:
            assert sorted(p.name for p in path.iterdir()) == want_new, f"failure at step {at} ({faults.hit})"
            assert same_weights(load(path), new)
            counts["new"] += 1
    print(f"\n{layout}: {at - 1} failures injected; {counts['old']} left the old checkpoint, {counts['new']} the new")
    assert at - 1 >= 20 and counts["old"] and counts["new"]


def test_a_killed_first_save_does_not_make_the_folder_not_empty(tmp_path, monkeypatch):
    """A first save into a new folder killed mid-write left .saving-*: the next save (no overwrite) takes the
    folder as empty and removes the leftovers."""
    path = tmp_path / "new"
    for at in (3, 6, 9):  # inside the writing of the staged files
        pid = os.fork()
        if pid == 0:
            try:
                Faults(monkeypatch, at, crash=True)
                mm.save_checkpoint(model(2), path, progress=False)
            finally:
                os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) >= 70
        assert any(p.name.startswith(".saving-") for p in path.iterdir())  # what the killed save left
        with pytest.warns(UserWarning, match="removed the incomplete save"):
            mm.save_checkpoint(model(2), path, progress=False)  # not refused as "not empty"
        assert sorted(p.name for p in path.iterdir()) == ["config.json", MANIFEST, "model.safetensors"]
        for p in list(path.iterdir()):
            p.unlink()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "ckpt"
    mm.save_checkpoint(model(1), path, progress=False)
    before = snapshot(path)
    with folder_lock(path):  # what a save in progress holds (flock: another open file description conflicts)
        held = (path / atomic.LOCK_NAME).read_bytes()
        with pytest.raises(FolderLocked) as info:
            mm.save_checkpoint(model(2), path, overwrite=True, progress=False)
        assert f"pid {os.getpid()}" in str(info.value) and str(path) in str(info.value)
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):
            mm.load_checkpoint(path, progress=False)  # nor can a load read a folder being swapped
        assert {k: v for k, v in snapshot(path).items() if k != atomic.LOCK_NAME} == before
        assert (path / atomic.LOCK_NAME).read_bytes() == held
    assert snapshot(path) == before  # the lock file goes with the lock
    assert same_weights(load(path), model(1))


def test_two_writers_racing_never_mix_their_files(tmp_path, monkeypatch):
    """Two processes save different models into one folder at the same instant, in a loop (bounded: ~4 s):
    each either succeeds or is refused naming the other; the folder always loads as one of the two whole."""
    real = checkpoints._write_safetensors

    def slow(*a, **k):  # widen the window in which both are saving
        time.sleep(0.002)
        return real(*a, **k)

    monkeypatch.setattr(checkpoints, "_write_safetensors", slow)
    path = tmp_path / "ckpt"
    models = {1: model(1), 2: model(2)}
    rounds = refused = 0
    t_end = time.monotonic() + 4
    while time.monotonic() < t_end or rounds < 5:
        rounds += 1
        r, w = os.pipe()
        pids = []
        for seed in (1, 2):
            pid = os.fork()
            if pid == 0:
                code = 3
                try:
                    os.close(w)
                    os.read(r, 1)  # both start together
                    mm.save_checkpoint(models[seed], path, overwrite=True, max_shard_size=12000, progress=False)
                    code = 0
                except FolderLocked as e:
                    code = 10 if "pid " in str(e) else 4
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(r)
        os.write(w, b"go")
        os.close(w)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        assert set(codes) <= {0, 10} and 0 in codes, f"round {rounds}: exit codes {codes}"
        refused += codes.count(10)
        got = load(path)
        assert same_weights(got, models[1]) or same_weights(got, models[2]), f"round {rounds}: a mixture"
        assert not [p.name for p in path.iterdir() if p.name.startswith(".")]
    print(f"\n{rounds} rounds of two writers; {refused} saves refused naming the holder, none mixed")
    assert rounds >= 5


def test_a_folder_mixing_two_saves_is_refused_naming_the_file(tmp_path):
    """The issue's mixture: shard 1 of one model, every other file of the other (same shapes)."""
    a, b = tmp_path / "a", tmp_path / "b"
    mm.save_checkpoint(model(1), a, max_shard_size=12000, progress=False)
    mm.save_checkpoint(model(2), b, max_shard_size=12000, progress=False)
    shard = sorted(p.name for p in a.glob("model-*.safetensors"))[0]
    (a / shard).write_bytes((b / shard).read_bytes())
    with pytest.raises(CheckpointError, match="mixes two checkpoints") as info:
        mm.load_checkpoint(a, progress=False)
    assert shard in str(info.value)
    (a / MANIFEST).unlink()  # without the manifest, the save ids in the shards' headers still disagree
    with pytest.raises(CheckpointError, match="different saves") as info:
        mm.load_checkpoint(a, progress=False)
    assert shard in str(info.value)
    (a / "config.json").write_text((a / "config.json").read_text().replace("10000.0", "20000.0"))
    mm.save_checkpoint(model(1), a, max_shard_size=12000, overwrite=True, progress=False)
    (a / "config.json").write_text((a / "config.json").read_text().replace("10000.0", "20000.0"))
    with pytest.raises(CheckpointError, match="config.json: its contents are not those of save"):
        mm.load_checkpoint(a, progress=False)


def test_saving_into_a_dangling_symlink_is_named(tmp_path):
    link = tmp_path / "ckpt"
    link.symlink_to(tmp_path / "gone" / "ckpt")
    with pytest.raises(FileNotFoundError) as info:
        mm.save_checkpoint(model(1), link, progress=False)
    msg = str(info.value)
    assert str(link) in msg and "symbolic link" in msg and str(tmp_path / "gone" / "ckpt") in msg
    assert "[Errno 17]" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and link.is_symlink()


# ---- durability: the order write -> fsync -> rename --------------------------------------------------------

class Recorder:
    """Records fsync (with the file's name and size at that moment) and renames, in order."""

    def __init__(self, monkeypatch):
        self.events = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            name = os.readlink(f"/proc/self/fd/{fd}")
            self.events.append(("fsync", name, os.fstat(fd).st_size))
            return real_fsync(fd)

        def replace(src, dst, **k):
            self.events.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))
            return real_replace(src, dst, **k)

        def rename(src, dst, **k):
            self.events.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))
            return real_rename(src, dst, **k)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    def index(self, kind, *match):
        return next(i for i, e in enumerate(self.events) if e[0] == kind and all(m in e[1:] for m in match))


def test_atomic_write_fsyncs_the_full_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name a file descriptor")
    target = tmp_path / "log.txt"
    data = b"x" * 10_000
    rec = Recorder(monkeypatch)
    atomic.atomic_write_bytes(target, data)
    (rename,) = [e for e in rec.events if e[0] == "rename"]
    tmp = rename[1]
    assert rename[2] == str(target.resolve()) and Path(tmp).parent == tmp_path.resolve()
    i_file, i_rename = rec.index("fsync", tmp), rec.events.index(rename)
    assert rec.events[i_file][2] == len(data)  # every byte written when it was flushed
    assert i_file < i_rename  # flushed, then named
    assert any(e[0] == "fsync" and e[1] == str(tmp_path.resolve()) for e in rec.events[i_rename:])  # the rename


def test_the_checkpoint_swap_fsyncs_every_file_before_the_commit_and_the_folder_after(tmp_path, monkeypatch):
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name a file descriptor")
    path = tmp_path / "ckpt"
    old_checkpoint(path, "consolidated")
    rec = Recorder(monkeypatch)
    mm.save_checkpoint(model(2), path, overwrite=True, max_shard_size=12000, progress=False)
    folder = str(path.resolve())
    (commit,) = [e for e in rec.events if e[0] == "rename" and Path(e[1]).name.startswith(".saving-")]
    stage, committed = commit[1], commit[2]
    i_commit = rec.events.index(commit)
    final = sorted(p.name for p in path.iterdir() if p.name != "NOTES.md")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) >= 2 and {"config.json", "model.safetensors.index.json", MANIFEST} < set(final)
    for name in final:
        i = rec.index("fsync", f"{stage}/{name}")
        assert i < i_commit and rec.events[i][2] == (path / name).stat().st_size, name  # whole, before the commit
        i_in = rec.index("rename", f"{committed}/{name}", f"{folder}/{name}")
        assert i_in > i_commit
    assert rec.index("fsync", stage) < i_commit  # the stage's entries are on disk before its rename
    assert any(e == ("fsync", folder, e[2]) for e in rec.events[i_commit + 1:rec.index("rename", f"{committed}/{shards[0]}")])
    last_in = max(i for i, e in enumerate(rec.events) if e[0] == "rename" and e[1].startswith(committed + "/"))
    assert any(e[0] == "fsync" and e[1] == folder for e in rec.events[last_in:])
    # the manifest arrives last, the config just before it
    arrivals = [Path(e[2]).name for e in rec.events if e[0] == "rename" and e[1].startswith(committed + "/")]
    assert arrivals[-2:] == ["config.json", MANIFEST]


def test_readers_never_refuse_each_other(tmp_path):
    """Any number of readers share a folder's lock. A reader that leaves holds it exclusively for an instant to
    remove the lock file; a reader arriving in that instant waits for it instead of being refused as if a save
    were in progress."""
    import threading
    from minimistral.storage.atomic import FolderLocked, folder_lock
    refused = []

    def read_many():
        for _ in range(300):
            try:
                with folder_lock(tmp_path, shared=True, what="load"):
                    pass
            except FolderLocked as e:
                refused.append(str(e))

    threads = [threading.Thread(target=read_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not refused, f"{len(refused)} of 1200 reads refused, e.g. {refused[0]}"
