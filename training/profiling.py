"""An optional torch.profiler trace of a few early training steps, for TensorBoard's profiler view.

``train.profile_trace=DIR`` (``--profile-trace DIR``): rank 0 skips the first steps (compilation,
cuDNN autotuning), warms the profiler up, records a few steps and writes DIR/*.pt.trace.json
(``tensorboard --logdir DIR``). The per-stage table of ``--profile`` is loop.StageTimer's; this is
the kernel-level view behind it.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch.profiler import ProfilerActivity

WAIT_STEPS = 2  # steps skipped: the first ones compile and autotune
WARMUP_STEPS = 2  # steps the profiler runs but discards (its own start-up)
ACTIVE_STEPS = 4  # steps recorded: steps 5-8 of this invocation


class TraceWindow:
    """A context manager around the training run; ``hook`` goes into Hooks.after_step. With an
    empty ``logdir`` it does nothing and ``hook`` is None."""

    def __init__(self, logdir: str, device: torch.device):
        self._prof = None
        self._steps = 0
        self.logdir = logdir
        if logdir:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            self._prof = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=WAIT_STEPS, warmup=WARMUP_STEPS, active=ACTIVE_STEPS, repeat=1),
                on_trace_ready=torch.profiler.tensorboard_trace_handler(logdir))

    @property
    def hook(self) -> Callable[..., None] | None:
        return self.step if self._prof is not None else None

    def step(self, *_: object) -> None:
        if self._prof is None:
            return
        self._prof.step()
        self._steps += 1
        if self._steps == WAIT_STEPS + WARMUP_STEPS + ACTIVE_STEPS:  # trace written: stop paying for it
            self.close()

    def close(self) -> None:
        """Stops the profiler; a window cut short by the end of training is written as it stands,
        and a warning says how much of it there is (none, for a run of WAIT + WARMUP steps or fewer)."""
        if self._prof is None:
            return
        self._prof.stop()
        self._prof = None
        recorded, first = self._steps - WAIT_STEPS - WARMUP_STEPS, WAIT_STEPS + WARMUP_STEPS + 1
        if recorded < ACTIVE_STEPS:
            held = f"only {recorded} of them" if recorded > 0 else "none of them"
            print(f"warning: --profile-trace {self.logdir}: training stopped after {self._steps} step(s); the "
                  f"trace records steps {first}-{first + ACTIVE_STEPS - 1} of this invocation, so it holds {held}",
                  file=sys.stderr)

    def __enter__(self) -> TraceWindow:
        if self._prof is not None:
            self._prof.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
