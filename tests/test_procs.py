"""The bounded-process helper every test that starts processes uses (procs.py): a command past its
deadline, and a command that leaves a process behind, fail with the log tail and kill everything
they started, including a process in a session of its own (as torchrun starts its workers)."""
from __future__ import annotations

import sys
import time

import pytest

import procs
from conftest import alive
from procs import ProcessFailure, run_bounded

# Starts a sleeper in a new session (out of our process group), says so on both streams, then
# sleeps (argv[2] == "hang") or exits at once.
SPAWN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
print("started worker", child.pid, flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


def gone_soon(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_output_and_exit_status(tmp_path):
    r = run_bounded([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                    cwd=tmp_path, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_timeout_kills_everything_it_started_and_fails_with_the_log_tail(tmp_path):
    pidfile = tmp_path / "worker.pid"
    start = time.monotonic()
    with pytest.raises(ProcessFailure) as e:
        run_bounded([sys.executable, "-c", SPAWN, pidfile, "hang"], cwd=tmp_path, timeout=5)
    assert time.monotonic() - start < 30
    message = str(e.value)
    assert "timed out after 5s; killed its process group and 1 other process(es)" in message
    assert "started worker" in message and "a line on stderr" in message
    assert gone_soon(int(pidfile.read_text()))


def test_a_process_left_behind_fails_the_test_and_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(procs, "GRACE_S", 0.5)
    pidfile = tmp_path / "worker.pid"
    with pytest.raises(ProcessFailure, match=r"exited 0 but left 1 process\(es\) running \(now killed\)") as e:
        run_bounded([sys.executable, "-c", SPAWN, pidfile, "exit"], cwd=tmp_path, timeout=60)
    assert "time.sleep(600)" in str(e.value)  # the straggler's command line
    assert gone_soon(int(pidfile.read_text()))
