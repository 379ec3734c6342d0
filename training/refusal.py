"""Bad input that only the ranks can see (an empty class folder, an image that does not decode under
data.bad_images=error, a checkpoint that does not read), and how a launch ends on it instead of
spending torchrun's restarts meeting it again (docs/OPERATIONS.md, "A refusal is not restarted").

torchrun restarts a failed group whatever the exit status, and exits only 0 or 1. So the launchers
(launch/common.sh) name a file of their own in FASTIMAGENET_REFUSED: a rank that refuses writes its
error line there, a restarted rank that finds a line there stops, and the launcher says the line
last and exits 2.
Torch-free: train.main asks it before anything is imported."""
from __future__ import annotations

import os
import sys

ENV = "FASTIMAGENET_REFUSED"


def refuse(line: str, say: bool = True) -> int:
    """A bad-input refusal: the one-line error (on stderr when ``say``), noted for the launcher; 2."""
    if say:
        print(line, file=sys.stderr, flush=True)
    _note(line)  # for the launcher's exit status, and for a restart to end on
    return 2


def noted() -> str | None:
    """The first line this machine's ranks noted in this launch (a restart of a refused launch), or
    None: none yet, no launcher's file, or not a torchrun worker (a stray variable must not end a run)."""
    path = os.environ.get(ENV)
    if not path or "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") or None
    except OSError:
        return None


def restart_on_one_machine() -> int | None:
    """A restart of a one-machine group a rank already refused: 0, the status that ends it (every rank
    reads the note before any work, so torchrun finishes without restarting and the launcher exits 2);
    None: go on. Across machines a rank must not quit before joining the group (the other machines'
    ranks would wait for it for the whole collective timeout): there the group learns of the refusal
    in its first collective (dist.group_attempt), and each rank passes it on (pass_on) and ends.
    A rank that refuses before it can join (one short of a GPU) is the launchers' --check's to find."""
    if os.environ.get("WORLD_SIZE") != os.environ.get("LOCAL_WORLD_SIZE"):
        return None  # several machines
    return 0 if noted() is not None else None


def pass_on(line: str) -> None:
    """A restart of a group another machine's rank refused (``line``, from the group's first
    collective): noted here too, so every machine's launcher exits 2 saying it, rather than 1 naming
    a lost peer."""
    if noted() is None:  # the refusing machine's ranks noted it when they refused
        _note(line)


def _note(line: str) -> None:
    if path := os.environ.get(ENV):
        try:
            # one short line per rank: O_APPEND keeps them whole; a path's undecodable bytes
            # (surrogates, from os.walk) are written back as those bytes
            with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the launcher then exits as torchrun does; the line is said all the same
