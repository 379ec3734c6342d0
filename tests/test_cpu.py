"""Training on the CPU: the host allocator setting and the precision ``auto`` picks."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training import loop
from procs import run_bounded

REPO = Path(__file__).resolve().parents[1]

# Allocates, touches and frees a 64 MiB tensor 16 times; prints the page faults of each of the last 8
# rounds (glibc reuses a freed block of one size once a few sit in its bins: after 6 rounds here).
FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from training import hostmem
    if sys.argv[1] == "keep" and not hostmem.keep_large_blocks():
        print("not glibc"); sys.exit(0)
    faults = []
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20, dtype=torch.float32)  # filling touches every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults[8:])
""")
PAGES = (64 << 20) // 4096  # what a fresh 64 MiB mapping faults in


def faults(mode: str) -> list[int] | None:
    r = run_bounded([sys.executable, "-c", FAULTS, mode], REPO, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip()
    return None if out == "not glibc" else [int(n) for n in out.split()]


def test_large_blocks_are_reused_instead_of_faulted_in_every_step():
    kept = faults("keep")
    if kept is None:
        pytest.skip("the C library is not glibc")
    assert all(n >= PAGES for n in faults("default"))  # glibc's default: a fresh mmap every time
    # kept in the heap: the block's pages stay mapped (glibc's bins sometimes take a round longer)
    assert sum(n < PAGES // 100 for n in kept) >= 6, kept


# malloc and free of a 64 MiB block at the top of the heap (no torch allocations around it) 8 times:
# glibc trims a free top above its trim threshold, so each round would fault the pages in anew.
TOP = textwrap.dedent("""
    import ctypes, resource, sys
    from training import hostmem
    if not hostmem.keep_large_blocks():
        print("not glibc"); sys.exit(0)
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(64 << 20)
        ctypes.memset(p, 1, 64 << 20)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(*faults)
""")


def test_a_freed_block_at_the_top_of_the_heap_is_not_given_back():
    r = run_bounded([sys.executable, "-c", TOP], REPO, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    if r.stdout.strip() == "not glibc":
        pytest.skip("the C library is not glibc")
    faults = [int(n) for n in r.stdout.split()]
    assert all(n < PAGES // 100 for n in faults[1:]), faults  # the first round faults the block in once


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 avx512_vnni", "bf16"),
                                             ("fpu amx_bf16 amx_tile amx_int8", "bf16"),
                                             ("fpu sse avx512f avx512_vnni", "fp32"), (None, "fp32")])
def test_auto_precision_reads_the_cpu_flags_where_torch_has_no_probe(monkeypatch, tmp_path, flags, expected):
    """torch 2.4 has neither bf16 probe: Linux's flags decide (on torch 2.4.1, the CPU config took
    46.0 s in fp32, 30.9 s in bf16 on the 2-core VM); no /proc/cpuinfo (None): fp32, as before."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n")
    monkeypatch.setattr(loop, "CPUINFO", str(cpuinfo))
    assert loop.resolve_precision(torch.device("cpu"), "auto") == expected


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, avx512_bf16, amx, expected):
    # raising=False: torch 2.4 (the floor) has neither probe, and native_bf16 reads a missing one as no
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert loop.resolve_precision(cpu, "auto") == expected
    for explicit in ("fp32", "fp16", "bf16"):
        assert loop.resolve_precision(cpu, explicit) == explicit
    # the warning: an explicit bf16 the CPU can only emulate; never fp32
    assert (loop.precision_warning(cpu, "bf16") is None) == (expected == "bf16")
    assert loop.precision_warning(cpu, "fp32") is None
