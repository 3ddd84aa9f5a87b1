"""Reliability of checkpoint files: damaged or foreign files give one clear error, and killed saves lose nothing."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vit_helpers import checkpoint as C

REPO = Path(__file__).resolve().parents[1]


class NotATensor:
    """Pickled by reference: a file holding one is refused by weights_only loading."""


def _save_good(path: Path) -> Path:
    C.atomic_save({"model_args": {}, "model": {"w": torch.arange(1000.0)}}, path)
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("name, contents, says", [
    ("empty", lambda good: b"", "is empty"),
    ("truncated", lambda good: good[: len(good) // 2], "cut short"),
    ("csv", lambda good: b"epoch,loss\n1,0.5\n", "not a PyTorch checkpoint"),
    ("lfs-pointer", lambda good: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "git lfs pull"),
    ("html", lambda good: b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "web page"),
])
def test_unreadable_checkpoint_names_the_file_and_the_fix(tmp_path, name, contents, says):
    good = _save_good(tmp_path / "good.pt").read_bytes()
    path = tmp_path / f"{name}.pt"
    path.write_bytes(contents(good))
    with pytest.raises(ValueError) as e:  # not torch's EOFError, KeyError, RuntimeError or UnpicklingError
        C.load(path)
    assert type(e.value).__name__ == "CheckpointError"
    assert str(path) in str(e.value) and says in str(e.value)


def test_checkpoint_with_python_objects_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"model": NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only=False") as e:
        C.load(path)
    assert str(path) in str(e.value) and "NotATensor" in str(e.value)


def test_non_dict_and_missing_keys_are_named(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list, not a checkpoint"):
        C.load(tmp_path / "list.pt")
    torch.save({"weight": torch.ones(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match=r"lacks \['model_args', 'model'\].*bare state_dict.*load_state_dict"):
        C.load(tmp_path / "state_dict.pt", keys=C.CHECKPOINT_KEYS)
    assert C.load(tmp_path / "state_dict.pt")["weight"].sum() == 2  # no keys asked: any dict


def test_folder_instead_of_file_points_at_the_files_in_it(tmp_path):
    _save_good(tmp_path / "best.pt")
    with pytest.raises(IsADirectoryError, match="best.pt"):
        C.load(tmp_path)


def test_failed_save_says_which_file_and_that_the_old_one_is_kept(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    path = _save_good(tmp_path / "c.pt")
    with pytest.raises(RuntimeError) as e:
        C.atomic_save({"a": Boom()}, path)
    assert any(str(path) in note and "unchanged" in note for note in getattr(e.value, "__notes__", []))


_WRITER = """
import os, sys, time, torch
from vit_helpers.checkpoint import atomic_save
path, marker = sys.argv[1], sys.argv[2]
atomic_save({"model_args": {}, "model": {"w": torch.ones(3)}}, path)
def stall(fd):  # the second save stops here: its data written to the temporary file, not yet renamed
    open(marker, "w").close()
    time.sleep(120)
os.fsync = stall
atomic_save({"model_args": {}, "model": {"w": torch.zeros(100_000)}}, path)
"""


def test_save_killed_midway_keeps_the_last_good_file_and_the_next_save_cleans_up(tmp_path):
    path, marker = tmp_path / "last.pt", tmp_path / "in-save"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(marker)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert writer.poll() is None, "the writer exited before its second save"
            assert time.monotonic() < deadline, "the writer never reached its second save"
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size > 400_000  # the kill left a full-size temporary file
    assert torch.equal(C.load(path)["model"]["w"], torch.ones(3))  # loads ignore it: the last good file is intact
    C.atomic_save({"model_args": {}, "model": {"w": torch.full((3,), 2.0)}}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-save", "last.pt"]
    assert torch.equal(C.load(path)["model"]["w"], torch.full((3,), 2.0))


def test_atomic_save_removes_only_temp_files_no_live_writer_owns(tmp_path):
    # atomic_save names its temporary files .<name>.<host>.<pid>.<random>.tmp, the host name sanitised
    host, dead, old = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40], _dead_pid(), time.time() - 3 * 3600
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {  # name: (age in the past, removed?)
            f".best.pt.{host}.{dead}.aaaa.tmp": (False, True),  # this host, writer gone
            f".best.pt.{host}.{os.getpid()}.aaab.tmp": (False, True),  # our pid, not our save: a restarted job's pid
            f".best.pt.{host}.{live.pid}.aaac.tmp": (False, False),  # a live writer
            f".best.pt.{host}.{live.pid}.aaad.tmp": (True, True),  # ...whose file nobody touched for hours
            f".best.pt.otherhost.{dead}.aaae.tmp": (False, False),  # another host's, fresh: can't tell
            f".best.pt.otherhost.{dead}.aaaf.tmp": (True, True),
            ".best.pt.k3j4h5g6.tmp": (False, False),  # older vit_helpers' names (no pid): by age only
            ".best.pt.k3j4h5g7.tmp": (True, True),
            f".last.pt.{host}.{dead}.aaag.tmp": (True, False),  # another file's: its own saves clean it
            "notes.tmp": (True, False),
        }
        for name, (is_old, _) in files.items():
            (tmp_path / name).write_bytes(b"x")
            if is_old:
                os.utime(tmp_path / name, (old, old))
        C.atomic_save({"a": 1}, tmp_path / "best.pt")
    finally:
        live.kill()
        live.wait()
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {"best.pt"} | {n for n, (_, removed) in files.items() if not removed}
