"""Bounded child processes for the tests: a deadline, and nothing left running afterwards.

Every command runs in its own session and process group, with its output in files (not pipes, which
a stray grandchild would hold open). On the deadline the whole group is killed and the test fails
with the tail of the log. The group alone is not enough: torchrun starts each worker in a session of
its own, so killing torchrun's group orphans the workers (issue #17: a SIGKILL test hung past its
timeout with two train.py workers left behind). So each command also gets a unique variable in its
environment, which every process it starts inherits; whatever carries it is stopped, then killed,
on the deadline and after a normal exit (where it is a leak, and the test fails naming it).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence

TAIL = 4000  # characters of stdout and of stderr quoted in a failure
GRACE_S = 10.0  # how long a command's descendants may take to exit after it did


class ProcessFailure(AssertionError):
    """A command ran past its deadline or left processes behind; the message holds the log tail."""


def run_bounded(cmd: Sequence[str], cwd: str | os.PathLike, timeout: float,
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` (environment ``env``, default ours); its exit status and text output.
    Past ``timeout`` seconds everything it started is killed and ProcessFailure raised."""
    cmd = [os.fspath(c) for c in cmd]
    tag = f"FASTIMAGENET_TEST_PROC_{uuid.uuid4().hex}"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, start_new_session=True,
                             env={**(os.environ if env is None else env), tag: "1"})
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            others = kill_tagged(tag)
            raise ProcessFailure(f"{shlex.join(cmd)}: timed out after {timeout:g}s; killed its process group "
                                 f"and {len(others)} other process(es) it started\n{_tails(out, err)}") from None
        left = _wait_untagged(tag, GRACE_S)
        if left:
            raise ProcessFailure(f"{shlex.join(cmd)}: exited {p.returncode} but left {len(left)} process(es) "
                                 f"running (now killed): {'; '.join(left)}\n{_tails(out, err)}")
        return subprocess.CompletedProcess(cmd, p.returncode, _read(out), _read(err))


def tagged(tag: str) -> dict[int, str]:
    """Live processes whose environment holds ``tag``, with their command lines (ours to read only)."""
    found = {}
    needle = f"\0{tag}=".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = b"\0" + f.read()
            if needle in environ:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    found[int(entry.name)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def kill_tagged(tag: str) -> list[str]:
    """Stop every process carrying ``tag`` (so none can start another, as torchrun restarts
    workers), until no new one appears, then kill them all. Returns their command lines."""
    stopped: dict[int, str] = {}
    while new := {pid: c for pid, c in tagged(tag).items() if pid not in stopped}:
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    return [f"{pid} {c}" for pid, c in stopped.items()]


def _wait_untagged(tag: str, grace_s: float) -> list[str]:
    """[] once nothing carries ``tag``; after ``grace_s``, the stragglers, killed."""
    deadline = time.monotonic() + grace_s
    while tagged(tag):
        if time.monotonic() > deadline:
            return kill_tagged(tag)
        time.sleep(0.1)
    return []


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _read(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _tails(out, err) -> str:
    return f"--- stdout (tail)\n{_read(out)[-TAIL:]}\n--- stderr (tail)\n{_read(err)[-TAIL:]}"
