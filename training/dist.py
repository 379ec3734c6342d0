"""torchrun environment, process-group set-up and teardown, rank helpers, reductions, elastic
attempts (whether this one restarts the run, decided for the whole group), and the failure side: a
one-line report when a collective fails because a peer died or hung, and the fault-injection drill
(docs/OPERATIONS.md)."""
from __future__ import annotations

import datetime
import gc
import json
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from training import checkpoint, refusal
from training.config import ConfigError
from training.files import write_atomic


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(ConfigError):
    """A device this process cannot use. It depends on the machine and the local rank, not on the
    command line alone (local rank 0 of an 8-process machine with 4 GPUs is fine, 4..7 are not), so
    every rank that hits it says it (train.run), not rank 0 alone."""
    per_rank = True


def device_problem(requested: str, local_rank: int = 0) -> str | None:
    """Why local rank ``local_rank`` cannot have the device ``requested`` names; None when it can.
    Counts the GPUs and opens none, as the launchers' --check does (machine_device_problem)."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        return "--device cuda: no CUDA device is visible (train.device=auto or cpu runs on the CPU)"
    if local_rank >= torch.cuda.device_count():
        return (f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible (start at most that "
                "many processes per machine: NPROC, NPROC_PER_NODE, --nproc_per_node)")
    return None


def machine_device_problem(requested: str, procs: int) -> str | None:
    """What the launchers' --check says of this machine, which will start ``procs`` processes: each
    needs its GPU (device_problem of the last), and `auto` must find CUDA, since a machine whose
    driver failed would run its ranks on the CPU over gloo beside other machines' NCCL ranks, and
    hang the group. Under the launchers a CPU run says train.device=cpu (as local.sh asks)."""
    if requested == "auto" and not torch.cuda.is_available():
        return (f"train.device=auto: no CUDA device is visible on {socket.gethostname()} (a CPU run under the "
                "launchers says train.device=cpu)")
    return device_problem(requested, procs - 1)


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when CUDA is present, else the CPU."""
    if (problem := device_problem(requested, local_rank)) is not None:
        raise DeviceError(problem)
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(requested_device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); one process without it.

    The timeout bounds how long healthy ranks wait in a collective for a dead or hung one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(world_size, timeout)
        extra = {"store": store, "rank": rank, "world_size": world_size} if store is not None else {}
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None,
                                **extra)
    return DistInfo(rank, world_size, local_rank, device)


def _attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun lends its rendezvous TCPStore to the workers (TORCHELASTIC_USE_AGENT_STORE), and a
    failed attempt's keys stay in it: a restarted group's gloo/NCCL bootstrap can read a dead
    worker's address and fail to connect, attempt after attempt (pytorch/pytorch#135712). On one
    machine every rank knows the attempt (the restart count), so each attempt gets its own keys.
    Across machines restart counts are per node: there the launchers set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, which gives every attempt a fresh store instead."""
    if (restart_count() == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or os.environ.get("GROUP_WORLD_SIZE", "1") != "1"):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"fastimagenet/attempt{restart_count()}/", store)


def teardown() -> None:
    if dist.is_initialized():
        # A dropped DDP wrapper may wait for the cyclic collector (the first of a process does: the frames
        # of the torch._dynamo import its constructor starts hold it). Collected after the group is
        # destroyed, its Reducer drops the group's last reference and destroys it with the GIL held, and
        # torch 2.11 deadlocks there when a gloo thread still has a Python tensor to free (a two-rank
        # evaluation hung at exit). Collected now, while the group is registered, it is not the last.
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def gather_objects(obj: object) -> list:
    """Every rank's ``obj``, by rank, on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


# ----------------------------------------------------------------------------- elastic attempts

ATTEMPT_FILE = "elastic_attempt.json"  # in the logdir: the torchrun agents of the latest attempt


@dataclass(frozen=True)
class Attempt:
    """This attempt of a run, as the whole group sees it (the same on every rank)."""
    restarted: bool  # an elastic restart of a run of this torchrun job: resume it, do not start over
    agents: tuple[str, ...]  # each rank's torchrun agent (agent_id), by rank
    own_run: bool = False  # an agent of the attempt recorded in the logdir runs a rank now: the run there is this job's
    # each rank's host and the epoch of the newest checkpoint it sees in the logdir (-1: none), by rank
    seen: tuple[tuple[str, int], ...] = field(default=(), compare=False)
    # the line some rank's machine noted when it refused this launch's input (refusal.noted), by rank
    # order; None: no refusal, or not under a launcher
    refused: str | None = field(default=None, compare=False)


def restart_count() -> int:
    """How often this machine's torchrun agent has restarted its workers after a failure (0: the
    first attempt, or not under torchrun), plus how often Slurm requeued the job: a requeued job
    runs the same run again, so it resumes the logdir's newest checkpoint even when the job was
    first submitted with --resume PATH (which would roll it back). Per machine: see group_attempt."""
    counts = (os.environ.get(v, "0") for v in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))
    return sum(int(c) if c.isdigit() else 0 for c in counts)


def agent_id() -> str:
    """The torchrun agent that started this process (its parent): host, pid and the pid's start
    time, so a reused pid is another agent. It stays while the agent restarts its workers; a new
    job, or a machine's agent started anew, has a new one. "" when not under torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return ""
    ppid = os.getppid()
    try:  # field 22, counted after the parenthesised command name, which may hold spaces
        started = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"{socket.gethostname()}:{ppid}:{started}"


def group_attempt(info: DistInfo, logdir: str) -> Attempt:
    """Whether this attempt restarts the run in ``logdir``, decided for the group (a collective).

    Each machine's agent counts restarts for itself: the one whose worker failed counts one, one that
    only restarts its workers because the membership changed does not, and the agent of a machine
    started anew begins at 0. So it is a restart when any rank's count is above 0, or when an agent
    of the attempt recorded in the logdir (record_attempt) runs a rank now, which also holds when
    every agent reports 0. A new job has only new agents: a fresh run, unless told --resume.
    Each rank also says which checkpoints it sees (check_logdir_shared) and whether its machine noted
    a refusal in an earlier attempt (refusal.pass_on): no extra collective."""
    recorded = _recorded_agents(logdir) if info.is_main else []
    try:
        newest = checkpoint.epoch_of(checkpoint.list_checkpoints(logdir)[-1])
    except (IndexError, OSError):
        newest = -1
    everyone = gather_objects((restart_count(), agent_id(), recorded, (socket.gethostname(), newest), refusal.noted()))
    agents = tuple(agent for _, agent, *_ in everyone)
    earlier = set(everyone[0][2]) - {""}
    own = bool(earlier & set(agents))
    refused = next((line for *_, line in everyone if line is not None), None)
    return Attempt(max(count for count, *_ in everyone) > 0 or own, agents, own,
                   tuple(seen for *_, seen, _ in everyone), refused)


def check_logdir_shared(attempt: Attempt, logdir: str) -> None:
    """ConfigError (the same on every rank) when a rank sees a newer checkpoint in ``logdir`` than rank 0,
    the rank that resumes from it: the logdir is not one filesystem all nodes share (a c10d restart put
    rank 0 on a machine without the run's checkpoints), and resuming would start the run over or roll
    it back, throwing away what the newer checkpoint holds."""
    host0, epoch0 = attempt.seen[0]
    rank, (host, epoch) = max(enumerate(attempt.seen), key=lambda r: r[1][1])
    if epoch > epoch0:
        name = checkpoint.path_for(logdir, epoch).name
        mine = f"sees {checkpoint.path_for(logdir, epoch0).name}" if epoch0 >= 0 else "sees no checkpoint"
        raise ConfigError(f"logdir {logdir} differs between nodes: rank 0 (host {host0}) {mine}, rank {rank} "
                          f"(host {host}) sees {name}; the logdir must be on a filesystem shared by all nodes "
                          "(or use fixed node ranks, NODE_RANK), else this run would start over or roll back")


def record_attempt(logdir: str, attempt: Attempt) -> None:
    """Note the group's agents in the logdir (rank 0 calls it), for group_attempt after a restart.
    Outside torchrun there is nothing to note."""
    if not any(attempt.agents):
        return
    write_atomic(Path(logdir) / ATTEMPT_FILE, json.dumps({"agents": list(attempt.agents)}))  # never half a record


def _recorded_agents(logdir: str) -> list[str]:
    try:
        agents = json.loads((Path(logdir) / ATTEMPT_FILE).read_text())["agents"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none yet (or unreadable): the restart counts decide alone
    return [a for a in agents if isinstance(a, str)] if isinstance(agents, list) else []


# ----------------------------------------------------------------------------- peer failures

FAULT_ENV = "FASTIMAGENET_FAULT"


def is_peer_failure(e: BaseException) -> bool:
    """A collective that failed because another rank died, hung or lost its connection: a backend
    error (DistError), or gloo's RuntimeError for a timeout or a closed connection."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("gloo" in text or "nccl" in text)


def peer_failure_message(e: BaseException, info: DistInfo, timeout_s: float, where: str = "") -> str:
    """One line naming this rank, the collective timeout and the ranks that did not report the same
    failure within a grace period (the likely dead or hung ones), via the rendezvous store."""
    lines = str(e).strip().splitlines()
    cause = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(e).__name__  # drop [file.cc:NN]
    cause = cause.split(". ")[0].rstrip(".")[:200]  # gloo adds advice sentences after the fact
    silent = _silent_ranks(info, min(float(timeout_s), 30.0))
    if silent:
        who = f"no word from rank {', '.join(map(str, silent))}: likely dead or hung"
    else:
        who = "a peer rank likely died or hung (torchrun's failure summary names the first to exit)"
    return (f"error: rank {info.rank} of {info.world_size} (host {socket.gethostname()}, local rank "
            f"{info.local_rank}){' ' + where if where else ''}: collective failed: {cause}; "
            f"collective timeout {timeout_s:g}s (train.dist_timeout_s); {who}")


def _silent_ranks(info: DistInfo, grace_s: float) -> list[int] | None:
    """Every rank that catches a peer failure checks in at the store; after all but one have (or
    grace_s), the ranks missing are the suspects. None when the store cannot be reached."""
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=max(grace_s, 1.0)))
        # No attempt number in the key: restart counts differ between machines, and each attempt
        # has its own store or key prefix already (_attempt_store, torch's env:// rendezvous).
        prefix = "fastimagenet/peer_failure/"
        store.set(prefix + str(info.rank), "1")
        reported = store.add(prefix + "count", 1)
        deadline = time.monotonic() + grace_s
        while reported < info.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            reported = store.add(prefix + "count", 0)
        return [r for r in range(info.world_size) if not store.check([prefix + str(r)])]
    except Exception:  # the store's host may be the dead one
        return None


def check_fault(num_epochs: int, world_size: int | None = None) -> tuple[str, int, int, int] | None:
    """FASTIMAGENET_FAULT as (action, epoch, step, rank), None when unset; ConfigError when it is
    malformed or could never fire (an epoch past the schedule, a rank past ``world_size`` when known):
    a drill that never fires would pass for a restart path that works. STEP is checked by the run,
    once its data is indexed (an epoch's steps depend on it: imagenet.check_drill_fires)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) != 4 or parts[0] not in ("kill", "hang") or not all(p.isdigit() for p in parts[1:]):
        raise ConfigError(f"{FAULT_ENV}={spec!r}: expected kill|hang:EPOCH:STEP:RANK")
    action, epoch, step, target = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    if epoch >= num_epochs:
        raise ConfigError(f"{FAULT_ENV}={spec!r}: no epoch {epoch} in a run of {num_epochs}")
    if world_size is not None and target >= world_size:
        raise ConfigError(f"{FAULT_ENV}={spec!r}: no rank {target} in a group of {world_size}")
    return action, epoch, step, target


def fault_injector(rank: int, restarted: bool, world_size: int,
                   num_epochs: int) -> Callable[[int, int], None] | None:
    """The fault drill: FASTIMAGENET_FAULT="kill:EPOCH:STEP:RANK" (or "hang:...") makes RANK SIGKILL
    itself (or sleep forever) right after training step STEP of EPOCH, in the first attempt of a run
    only (``restarted``: Attempt.restarted, the group's view, so it fires once on several machines
    too), and an elastic restart goes through. None (nothing checked per step) when unset. The spec
    is checked in every attempt: a restart after a refused first attempt must not train undrilled."""
    fault = check_fault(num_epochs, world_size)
    if fault is None or restarted:
        return None
    action, epoch, step, target = fault
    if rank != target:
        return None

    def fire(at_epoch: int, at_step: int) -> None:
        if at_epoch == epoch and at_step == step:
            print(f"fault drill ({FAULT_ENV}): rank {rank} {'killed' if action == 'kill' else 'hangs'} "
                  f"after epoch {epoch} step {step}", file=sys.stderr, flush=True)
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:
                time.sleep(3600)

    return fire
