"""Children that end with their rank: a rank killed hard (torchrun's SIGKILL after its grace period,
the OOM killer) takes its loader workers and header readers with it, even one stuck in a read."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, alive, descendants, kill_tree, make_jpeg_tree

# A rank whose every child blocks for good: a loader worker in an item that never returns, or a header
# reader opening a FIFO nobody writes to (an open that never returns, as on a file system that stopped).
_LOADER_RANK = """
import sys, time
sys.path.insert(0, "tests")
from loader_helpers import spec
from training.data import imagefolder
imagefolder._Samples.__getitem__ = lambda self, key: time.sleep(600)
next(iter(imagefolder.train_loader(spec(sys.argv[1], workers=1))))
"""
_READER_RANK = """
import sys
from training import headers
headers.probe_in_processes([sys.argv[1]], 1)
"""


def _kill_the_rank_of(script: str, arg: str) -> tuple[list[int], float]:
    """Start a rank, wait for its child, SIGKILL the rank; its children and how long they outlived it."""
    rank = subprocess.Popen([sys.executable, "-c", script, arg], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = descendants(rank.pid)
        assert children, "the rank started no child"
        time.sleep(1.5)  # the child is in its blocking call by now
        rank.kill()
        rank.wait()
        t0 = time.monotonic()
        while any(alive(c) for c in children) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        return children, time.monotonic() - t0
    finally:
        kill_tree(rank.pid)
        for c in children:
            if alive(c):
                os.kill(c, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_loader_worker_stuck_in_an_item_ends_with_its_rank(tmp_path):
    """The DataLoader's watchdog sees its parent go only between items: without the death signal the
    worker stayed for the 600 s of its item."""
    children, outlived = _kill_the_rank_of(_LOADER_RANK, str(make_jpeg_tree(tmp_path / "data")))
    assert not any(alive(c) for c in children) and outlived < 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_header_reader_stuck_in_an_open_ends_with_its_rank(tmp_path):
    fifo = tmp_path / "stuck.JPEG"
    os.mkfifo(fifo)
    children, outlived = _kill_the_rank_of(_READER_RANK, str(fifo))
    assert not any(alive(c) for c in children) and outlived < 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_header_reader_whose_rank_died_before_it_asked_exits_at_once():
    """The death signal covers only a parent that dies after the child asks for it: a reader whose
    rank was already gone (its parent is another process now) exits without reading its share."""
    reader = subprocess.Popen([sys.executable, "-m", "training.headers", str(os.getpid() ^ 1)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # stdin left open: a reader that goes on waits for its share for good
        assert reader.wait(timeout=60) == 1 and reader.stdout.read() == b""
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        for f in (reader.stdin, reader.stdout, reader.stderr):
            f.close()
