"""Child processes that end with the process that started them.

A rank that dies hard (torchrun's SIGKILL after its grace period, the OOM killer) gives its children no
chance to be told: DataLoader workers notice only between items, through their watchdog, and a header
reader only when it has read its whole share. One stuck in a read (a file system that stopped
answering) would stay for as long as the read does. Linux kills them with their parent instead. Torch-free.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent(parent_pid: int) -> None:
    """Call in the child: SIGKILL when the thread that started it ends (its process's main thread,
    for every caller here), or exit now if ``parent_pid`` has already gone. No-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return  # not allowed here (a seccomp profile): the watchdogs remain
    if os.getppid() != parent_pid:  # it died before the call above
        os._exit(1)
