"""What an image file holds, from its header and its last bytes: size, or why no backend can read it.

Reading a header is Python work under the GIL, so a large index is read by several processes: fresh
interpreters running this module (``python -m training.headers PARENT_PID``: NUL-separated paths on
stdin, a JSON list of answers on stdout). Fresh, not forked: a rank may hold CUDA and threads (the checkpoint
writer) that a fork would copy, and multiprocessing's spawn would run the caller's main script again.
Torch-free, so each starts in a fraction of a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from PIL import Image

from training.orphans import end_with_parent

# Formats both backends decode (DALI has no GIF); MPO is how PIL names multi-picture camera JPEGs.
DECODABLE = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "PPM", "WEBP", "JPEG2000"}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def pil_decodes(path: str) -> bool:
    """Whether PIL decodes the whole image (a full decode: slow, for the few suspicious files)."""
    try:
        with Image.open(path) as im:
            im.load()
    except DECODE_ERRORS:
        return False
    return True


def probe_image(path: str) -> tuple[int, int] | str:
    """(width, height) of a decodable image, else why not. Reads the header and the last bytes only:
    a JPEG without its end marker or a PNG without IEND is truncated and would stop DALI's decoder.
    Only a file whose end marker is not in its last KiB is decoded in full to tell."""
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
        if fmt not in DECODABLE:
            return f"unsupported format {fmt}"
        if fmt in ("JPEG", "MPO", "PNG"):
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
                tail = f.read()
            # Cameras may append bytes after the end marker, so look in the last KiB, not the last 2 bytes;
            # a phone's motion photo appends a whole video, so without the marker there, decode to tell.
            if (b"\xff\xd9" if fmt != "PNG" else b"IEND") not in tail and not pil_decodes(path):
                return "truncated file"
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    if min(size) <= 0:
        return f"empty image {size}"
    return size


def probe_in_processes(paths: Sequence[str], processes: int) -> list[tuple[int, int] | str]:
    """probe_image of each path, read by ``processes`` interpreters, each a contiguous share. Should
    this process stop meanwhile (a signal, Ctrl-C), the interpreters are killed, not waited for."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    step = -(-len(paths) // processes)
    shares = [b"\0".join(os.fsencode(p) for p in paths[i:i + step]) for i in range(0, len(paths), step)]
    cmd = [sys.executable, "-m", "training.headers", str(os.getpid())]
    procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in shares]
    pool = ThreadPoolExecutor(len(procs))  # one thread per interpreter: feed it, read it, no pipe deadlock
    try:
        outs = list(pool.map(lambda p, share: p.communicate(share), procs, shares))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pool.shutdown()
    found = []
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"reading image headers failed (exit {p.returncode}): {err.decode()[-2000:]}")
        found += [tuple(a) if isinstance(a, list) else a for a in json.loads(out)]
    return found


if __name__ == "__main__":
    end_with_parent(int(sys.argv[1]))  # a rank killed hard mid-index takes its readers with it
    json.dump([probe_image(os.fsdecode(p)) for p in sys.stdin.buffer.read().split(b"\0") if p], sys.stdout)
