"""Elastic restarts on several machines, on CPU: two torchrun agents of launch/multinode.sh on 127.0.0.1
(c10d rendezvous, one gloo process each) stand in for two machines, and whether an attempt restarts
the run is decided for the whole group (dist.group_attempt), not by each machine's restart count."""
from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import REPO, kill_tree, make_jpeg_tree
from dawn.events import load_run
from procs import run_bounded
from training import config as C
from training import dist, refusal, train

ARGS = ["data.workers=0", "train.print_freq=1"]
TINY = ["--config", str(REPO / "configs" / "tiny_cpu.yaml"), *ARGS]
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 16 train images: with 2 ranks, one step in each of tiny_cpu's epochs
    return make_jpeg_tree(tmp_path_factory.mktemp("jpeg") / "data", classes=2, train_per_class=8, val_per_class=2)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: intra-op threads only contend
    yield
    torch.set_num_threads(n)


@pytest.fixture
def not_under_torchrun(monkeypatch):
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(data: Path | tuple[Path, Path], logdir: Path,
                 env: dict | None = None) -> list[tuple[subprocess.Popen, Path]]:
    """Start two agents of launch/multinode.sh (NNODES=2, one process each), each with ``data`` or
    its own of two; (process, log) of each."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RESUME", *TORCHRUN_ENV)}
    port = free_port()
    env = {**clean, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "NNODES": "2", "NPROC_PER_NODE": "1",
           "RDZV_ENDPOINT": f"127.0.0.1:{port}", "RDZV_ID": f"test{port}", "CONFIG": "configs/tiny_cpu.yaml",
           "MAX_RESTARTS": "2", **(env or {})}
    logs = [logdir.with_name(f"{logdir.name}.agent{i}.log") for i in range(2)]
    datas = data if isinstance(data, tuple) else (data, data)
    return [(subprocess.Popen(["bash", "launch/multinode.sh", str(d), *ARGS, f"train.logdir={logdir}"],
                              cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True), log) for d, log in zip(datas, logs)]


def wait_all(agents: list[tuple[subprocess.Popen, Path]], timeout: int = 240,
             codes_wanted: list[int] | None = None) -> list[str]:
    """Every agent must exit 0 (or as ``codes_wanted`` says) within ``timeout`` seconds in all; returns
    each one's output. On a timeout or another status every process still running is killed, and the
    test fails with the logs' tails."""
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p, _ in agents]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p, _ in agents:
            if p.poll() is None:  # only a live agent: a reaped one's pid may be another's by now
                kill_tree(p.pid)
                p.wait()
    outs = [log.read_text() for _, log in agents]
    tails = "\n".join(f"--- {log}\n{out[-3000:]}" for (_, log), out in zip(agents, outs))
    wanted = codes_wanted or [0] * len(agents)
    assert codes == wanted, f"agents: {codes or f'timed out after {timeout}s'}\n{tails}"
    return outs


def dawn_rows(logdir: Path) -> list[list[str]]:
    r = subprocess.run([sys.executable, "dawn/prepare_dawn_tsv.py", "--events_path", str(logdir)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln.split("\t") for ln in r.stdout.splitlines()[1:]]


def test_rank_off_rank0s_machine_killed_the_group_resumes_the_run(data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted run and the drill side by side, to halve the wait. In the drill rank 1
    # SIGKILLs itself in epoch 1: its agent counts a restart; the other machine's agent, which runs
    # rank 0 (the rank that reads the checkpoint), restarts its worker for the membership change and
    # may count none. The group must resume all the same.
    agents = two_machines(data, ref) + two_machines(data, run, {dist.FAULT_ENV: "kill:1:0:1"})
    out = "\n".join(wait_all(agents)[2:])  # the drill's two agents
    assert out.count("fault drill (FASTIMAGENET_FAULT): rank 1 killed after epoch 1 step 0") == 1, out[-6000:]
    assert f"resuming from {run / 'checkpoints' / 'epoch_0001.pt'}" in out, out[-6000:]

    a, b = (torch.load(d / "checkpoints" / "epoch_0003.pt", weights_only=True) for d in (ref, run))
    assert a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = dawn_rows(run)
    assert [r[0] for r in rows] == ["0", "1", "2"]
    hours = [float(r[1]) for r in rows]
    assert all(0 < x < y for x, y in zip(hours, hours[1:])), rows
    assert [r[2:] for r in rows] == [r[2:] for r in dawn_rows(ref)]
    assert len(load_run(run).scalars["first"]) == 1


def test_a_machine_refusing_its_data_ends_every_machines_launch_with_its_line_after_one_restart(data, tmp_path):
    """One machine's copy of the data has an empty class folder, which only its rank sees (at index
    time). A rank must not quit before joining the group (the other machine's rank would wait for it
    for the whole collective timeout, here 300 s), so torchrun's first restart runs, and there the
    group shares the refusing machine's note (dist.group_attempt) and every rank ends well
    (refusal.pass_on): both launchers exit 2 with the refusal as their last line, and the refusing
    rank says it once, where each of MAX_RESTARTS=2's attempts indexed the data and refused again.
    Ending well lets torchrun end there, where a failed end would spend its last restart too."""
    bad = make_jpeg_tree(tmp_path / "bad", classes=2, train_per_class=8, val_per_class=2)
    for f in (bad / "validation" / "n00000001").iterdir():
        f.unlink()
    agents = two_machines((bad, data), tmp_path / "run", {"DIST_TIMEOUT": "300"})
    refusing, other = wait_all(agents, timeout=200, codes_wanted=[2, 2])
    line = refusing.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: rank [01]: class folder holds no images: {bad}/validation/n00000001", line), \
        refusing[-3000:]
    assert refusing.count(line) == 2, refusing[-3000:]  # its rank, in the first attempt only; the launcher
    assert other.strip().splitlines()[-1] == line and other.count(line) == 1, other[-3000:]
    # each torchrun ended well after its one restart (its ranks ended 0), not out of restarts
    assert "ChildFailedError" not in refusing + other, refusing[-3000:] + other[-3000:]
    assert not (tmp_path / "run").exists()  # the restart ended before the logdir's checks create it


# ------------------------------------------------------- the group's decision, in one process

def test_any_ranks_restart_count_makes_it_a_restart(tmp_path, monkeypatch, not_under_torchrun):
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    attempt = dist.group_attempt(info, str(tmp_path))
    assert attempt == dist.Attempt(False, ("",))
    dist.record_attempt(str(tmp_path), attempt)
    assert not (tmp_path / dist.ATTEMPT_FILE).exists()  # nothing to note outside torchrun
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert dist.group_attempt(info, str(tmp_path)).restarted
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # a requeued Slurm job: the same run again
    assert dist.group_attempt(info, str(tmp_path)).restarted
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    # Rank 0's agent restarted its worker for the membership change only; rank 1's counted the failure.
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setattr(dist, "gather_objects", lambda mine: [mine, (1, "", [], ("host1", -1), None)])
    assert dist.group_attempt(dist.DistInfo(0, 2, 0, torch.device("cpu")), str(tmp_path)).restarted


def test_a_refusal_any_machine_noted_reaches_every_rank_and_a_stray_variable_is_none(
        tmp_path, monkeypatch, not_under_torchrun):
    """What ends a restart of a refused launch across machines (refusal.pass_on): the line some
    machine's launcher note holds, the same on every rank. Outside torchrun the variable is no
    launcher's, and ends nothing."""
    note, logdir = tmp_path / "refused", str(tmp_path)
    note.write_text("error: mine\nerror: mine again\n")
    monkeypatch.setenv(refusal.ENV, str(note))
    two = dist.DistInfo(0, 2, 0, torch.device("cpu"))
    monkeypatch.setattr(dist, "gather_objects", lambda mine: [mine, (0, "", [], ("host1", -1), "error: theirs")])
    assert dist.group_attempt(two, logdir).refused == "error: theirs"  # rank 0's note reads as none
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    assert dist.group_attempt(two, logdir).refused == "error: mine"  # the first line, of the first rank
    note.write_text("")
    monkeypatch.setattr(dist, "gather_objects", lambda mine: [mine, (0, "", [], ("host1", -1), None)])
    assert dist.group_attempt(two, logdir).refused is None
    refusal.pass_on("error: theirs")
    refusal.pass_on("error: theirs")  # another rank of this machine
    assert note.read_text() == "error: theirs\n"


def test_an_agent_of_the_recorded_attempt_makes_it_a_restart_when_every_count_is_0(tmp_path, monkeypatch):
    """After a membership change every agent may report 0 (a machine's agent started anew); an agent
    that also ran the previous attempt still tells a restart from a new job."""
    info, logdir = dist.DistInfo(0, 1, 0, torch.device("cpu")), str(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = dist.group_attempt(info, logdir)
    assert first == dist.Attempt(False, (dist.agent_id(),)) and dist.agent_id()
    dist.record_attempt(logdir, first)
    assert dist.group_attempt(info, logdir).restarted  # the same agent: this job restarted
    monkeypatch.setattr(dist, "agent_id", lambda: "otherhost:123:456")
    assert not dist.group_attempt(info, logdir).restarted  # only new agents: a new job
    (tmp_path / dist.ATTEMPT_FILE).write_text('{"agents": ')  # an unreadable record: counts decide
    assert not dist.group_attempt(info, logdir).restarted


def test_each_attempt_of_a_requeued_slurm_job_gets_its_own_store_keys(monkeypatch):
    """restart_count adds Slurm's requeues to the agent's restarts: in a requeued job
    (SLURM_RESTART_COUNT=1) the agent's attempts 0, 1, 2 count 1, 2, 3, so each has its own key prefix
    in the agent's store. The larger of the two counts (1, 1, 2) would give attempts 0 and 1 the same
    keys, and the restarted group could read the dead attempt's addresses (pytorch/pytorch#135712)."""
    monkeypatch.setattr(torch.distributed, "TCPStore", lambda *a, **k: "store")
    monkeypatch.setattr(torch.distributed, "PrefixStore", lambda prefix, store: prefix)
    for k, v in {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                 "SLURM_RESTART_COUNT": "1", "GROUP_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    prefixes = []
    for attempt in range(3):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
        prefixes.append((dist.restart_count(), dist._attempt_store(2, datetime.timedelta(seconds=1))))
    assert prefixes == [(n, f"fastimagenet/attempt{n}/") for n in (1, 2, 3)]


@pytest.mark.parametrize("record", ['{"agents": ["", "otherhost:123:456"]}', '{"agents": 5}',
                                    '{"agents": [["otherhost:123:456"]]}', '{"agents": {"": 1}}'])
def test_a_record_naming_no_agent_of_this_attempt_is_a_new_run(tmp_path, monkeypatch, not_under_torchrun, record):
    """Only an agent id recorded in the logdir and running a rank now makes an attempt with every
    count 0 a restart: a blank entry (a rank that ran outside torchrun) is no agent, so a plain run
    (agent "") there is a new run; a record of another shape names no agent and is not an error."""
    (tmp_path / dist.ATTEMPT_FILE).write_text(record)
    attempt = dist.group_attempt(dist.DistInfo(0, 1, 0, torch.device("cpu")), str(tmp_path))
    assert attempt == dist.Attempt(False, ("",), own_run=False)


def test_each_rank_reports_the_newest_checkpoint_it_sees(tmp_path, not_under_torchrun):
    """What check_logdir_shared compares: the newest checkpoint in the rank's logdir (epoch 3 of 1, 3
    and 2), not the oldest, which would let rank 0 resume epoch 2 while another rank holds epoch 3."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for e in (1, 3, 2):
        (ckpts / f"epoch_{e:04d}.pt").write_bytes(b"")  # only the names are read
    attempt = dist.group_attempt(dist.DistInfo(0, 1, 0, torch.device("cpu")), str(tmp_path))
    assert attempt.seen == ((socket.gethostname(), 3),)


def test_a_restart_every_agent_counts_0_resumes_and_an_explicit_resume_path_still_starts_a_job(
        data, tmp_path, capsys, monkeypatch, one_thread):
    logdir = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    one_epoch = [str(data), *TINY, f"train.logdir={logdir}", "train.max_epochs=1", "train.short_epoch=true",
                 "train.short_epoch_steps=1"]
    assert train.main(one_epoch) == 0
    assert (logdir / dist.ATTEMPT_FILE).exists()
    # The next attempt, started by the same agent, reporting 0 restarts: it continues the run.
    assert train.main(one_epoch) == 0
    assert f"resuming from {logdir / 'checkpoints' / 'epoch_0001.pt'}" in capsys.readouterr().err
    assert len(load_run(logdir).scalars["first"]) == 1
    # A new job (new agents) given an explicit checkpoint starts from that one, as documented.
    monkeypatch.setattr(dist, "agent_id", lambda: "otherhost:123:456")
    assert train.main([*one_epoch, "--resume", str(logdir / "checkpoints" / "epoch_0001.pt"), "-e"]) == 0
    assert '"epoch": 1' in capsys.readouterr().out



def test_a_rank_0_blind_to_the_runs_checkpoints_stops_the_group_rather_than_start_over(data, tmp_path):
    """A logdir on each machine's own disk, with c10d rendezvous: a restart may put rank 0 on a machine
    without the run's checkpoints, and --resume auto (or the restart) would find none there and train
    from epoch 0, throwing the run away. Two spawned ranks on "machines" a and b (their own working
    directories, one relative logdir), gloo: b holds a checkpoint, rank 0 runs on a."""
    machines = [tmp_path / "a", tmp_path / "b"]
    (machines[1] / "run" / "checkpoints").mkdir(parents=True)
    (machines[1] / "run" / "checkpoints" / "epoch_0001.pt").write_bytes(b"")  # only its name is read
    clean = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env = {**clean, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    cmd = [sys.executable, str(REPO / "training" / "train.py"), str(data), *TINY, "train.logdir=run",
           "--resume", "auto", "train.max_epochs=1", "train.short_epoch=true", "train.short_epoch_steps=1"]
    for m in machines:
        m.mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        ranks = list(pool.map(lambda r: run_bounded(cmd, cwd=machines[r], timeout=120, env={**env, "RANK": str(r)}),
                              range(2)))
    assert [r.returncode for r in ranks] == [2, 2], "\n".join(r.stderr[-3000:] for r in ranks)
    host = socket.gethostname()
    assert [ln for r in ranks for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: logdir run differs between nodes: rank 0 (host {host}) sees no checkpoint, rank 1 (host {host}) "
        "sees epoch_0001.pt; the logdir must be on a filesystem shared by all nodes (or use fixed node ranks, "
        "NODE_RANK), else this run would start over or roll back"]
    assert list(machines[0].iterdir()) == []  # nothing written on rank 0's machine


def test_only_a_rank_seeing_newer_checkpoints_than_rank_0_stops_the_group():
    def seen(*epochs: int) -> dist.Attempt:  # each rank's newest checkpoint (-1: none), by rank
        return dist.Attempt(True, ("",) * len(epochs), seen=tuple((f"h{e}", e) for e in epochs))

    # one disk for all; rank 0's disk alone (fixed node ranks); others holding older leftovers
    for ok in [(-1,), (3, 3, 3), (3, -1, -1), (5, 3, -1)]:
        dist.check_logdir_shared(seen(*ok), "run")
    with pytest.raises(C.ConfigError, match=r"rank 0 \(host h3\) sees epoch_0003.pt, rank 2 \(host h7\) sees epoch_0007"):
        dist.check_logdir_shared(seen(3, -1, 7, 5), "run")
    # one epoch newer is newer too
    with pytest.raises(C.ConfigError, match=r"rank 0 \(host h3\) sees epoch_0003.pt, rank 1 \(host h4\) sees epoch_0004"):
        dist.check_logdir_shared(seen(3, 4), "run")


def test_a_rank_whose_machine_has_too_few_gpus_says_so(data, tmp_path, capsys, monkeypatch, not_under_torchrun):
    """NPROC_PER_NODE=8 (multinode.sh's default) on a machine with 2 GPUs: local ranks 2..7 cannot
    start, and none of them is rank 0, the only rank that said a ConfigError: the job failed with exit
    status 2 and no word of why. A device problem is the machine's: each rank that has it says it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for k, v in {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(k, v)
    rc = train.main([str(data), *TINY, "train.device=auto", f"train.logdir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (rc, err) == (2, ["error: rank 11: local rank 3 has no GPU: 2 visible (start at most that many "
                             "processes per machine: NPROC, NPROC_PER_NODE, --nproc_per_node)"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("procs, device, gpus, said", [
    ("4", "auto", 2, "error: local rank 3 has no GPU: 2 visible (start at most that many processes per machine: "
                     "NPROC, NPROC_PER_NODE, --nproc_per_node)"),
    ("2", "auto", 2, None), ("8", "cpu", 2, None),
    # a machine whose driver failed: its ranks would run on the CPU (gloo) beside NCCL ranks and hang the group
    ("2", "auto", 0, f"error: train.device=auto: no CUDA device is visible on {socket.gethostname()} (a CPU run "
                     "under the launchers says train.device=cpu)"),
    ("1", "cuda", 0, "error: --device cuda: no CUDA device is visible (train.device=auto or cpu runs on the CPU)"),
    ("", "cuda", 0, None),  # no launcher: --check counts no devices
])
def test_check_under_a_launcher_refuses_a_machine_short_of_a_gpu_per_process(
        data, tmp_path, capsys, monkeypatch, not_under_torchrun, procs, device, gpus, said):
    """A rank short of a GPU refuses before it can join the group, so across machines the group never
    shares that refusal (refusal.py) and every restart meets it again, while the other machines wait.
    The launchers' --check (LOCAL_WORLD_SIZE: the processes this machine will start) finds it first,
    and an `auto` that would fall back to the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", procs)
    rc = train.main([str(data), *TINY, f"train.device={device}", f"train.logdir={tmp_path / 'run'}", "--check"])
    assert (rc, capsys.readouterr().err.strip()) == ((2, said) if said else (0, ""))
