"""The launchers: shell syntax, and the exact torchrun / srun command each would run (LAUNCH_DRY_RUN=1)
for the imagenet18 schedules on 1, 8 and 16 machines. A real run of launch/local.sh is in
test_faults.py (the uninterrupted reference of the SIGKILL test)."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO
from procs import kill_tagged, run_bounded, tagged

SCRIPTS = ["launch/local.sh", "launch/multinode.sh", "launch/slurm.sbatch"]
TORCHRUN = ["python3", "-m", "torch.distributed.run"]
TRAIN = f"{REPO}/training/train.py"  # the launchers do not cd: relative paths stay the caller's


def launch(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "NCCL_", "GLOO_", "TORCH_DISABLE_SHARE"))
             and k not in ("NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_ENDPOINT", "CONFIG",
                           "PYTHON", "CUDA_VISIBLE_DEVICES", "IFNAME", "MAX_RESTARTS")}
    return run_bounded(["bash", script, *args], cwd=REPO, timeout=30, env={**clean, "LAUNCH_DRY_RUN": "1", **env})


def dry_run(script: str, *args: str, **env: str) -> tuple[list[str], list[str]]:
    """(exports, command tokens) of the last command line printed."""
    r = launch(script, *args, **env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    return [ln for ln in lines if ln.startswith("export ")], shlex.split(lines[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_syntax(script):
    r = run_bounded(["bash", "-n", script], cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    assert os.access(REPO / script, os.X_OK)


def test_local_one_machine_eight_gpus():
    exports, cmd = dry_run("launch/local.sh", "/data/imagenet", "--logdir", "runs/a b", NPROC="8")
    assert cmd == TORCHRUN + ["--standalone", "--nnodes=1", "--nproc_per_node=8", "--max-restarts=3",
                              TRAIN, "/data/imagenet", "--config", f"{REPO}/configs/imagenet18/1x8.yaml",
                              "--logdir", "runs/a b"]
    assert exports == ["export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"]


def test_local_options():
    exports, cmd = dry_run("launch/local.sh", "DATA", NPROC="2", CONFIG="configs/tiny_cpu.yaml", MAX_RESTARTS="5",
                           DIST_TIMEOUT="120", RESUME="auto", IFNAME="nosuch1", PYTHON="/opt/py/bin/python")
    assert cmd[:3] == ["/opt/py/bin/python", "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in cmd and "--max-restarts=5" in cmd
    assert cmd[cmd.index("DATA"):] == ["DATA", "--config", "configs/tiny_cpu.yaml", "train.dist_timeout_s=120",
                                       "--resume", "auto"]
    # a dry run checks no interface (it may print the command for other machines: slurm.sbatch)
    assert "export NCCL_SOCKET_IFNAME=nosuch1" in exports and "export GLOO_SOCKET_IFNAME=nosuch1" in exports


@pytest.mark.parametrize("nnodes", ["8", "16"])
def test_multinode_c10d(nnodes):
    exports, cmd = dry_run("launch/multinode.sh", "/data", "--fp16", NNODES=nnodes,
                           RDZV_ENDPOINT="node0:29400", RDZV_ID="job7")
    assert cmd == TORCHRUN + [f"--nnodes={nnodes}", "--nproc_per_node=8", "--max-restarts=3",
                              "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=job7",
                              TRAIN, "/data", "--config", f"{REPO}/configs/imagenet18/{nnodes}x8.yaml",
                              "--fp16"]


def test_multinode_static_node_rank():
    """Static rendezvous: no restarts unless asked for (a restart there could hang for the collective
    timeout, docs/OPERATIONS.md), and a warning when they are."""
    r = launch("launch/multinode.sh", "/data", NNODES="8", NODE_RANK="3", MASTER_ADDR="node0")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    cmd = shlex.split(r.stdout.strip().splitlines()[-1])
    assert "--node-rank=3" in cmd and "--master-addr=node0" in cmd and "--master-port=29500" in cmd
    assert "--max-restarts=0" in cmd and not any(c.startswith("--rdzv") for c in cmd)
    r = launch("launch/multinode.sh", "/data", NNODES="8", NODE_RANK="3", MASTER_ADDR="node0", MAX_RESTARTS="2")
    assert "--max-restarts=2" in shlex.split(r.stdout.strip().splitlines()[-1])
    assert r.stderr.startswith("warning: MAX_RESTARTS=2 with NODE_RANK (static rendezvous): a restart can hang"), r.stderr
    r = launch("launch/multinode.sh", "/data", NNODES="8", NODE_RANK="3", MASTER_ADDR="node0", MAX_RESTARTS="0")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # restarts off, as advised: nothing to warn about


@pytest.mark.parametrize("nodes", ["1", "8", "16"])
def test_slurm(nodes):
    r = launch("launch/slurm.sbatch", "/data", SLURM_NNODES=nodes, SLURM_JOB_ID="123", HEAD_NODE="gpu-a01")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.strip().splitlines() if not ln.startswith("export ")]
    srun, torchrun = shlex.split(lines[0]), shlex.split(lines[1])
    assert srun == ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                    "bash", "launch/multinode.sh", "/data"]
    assert torchrun == TORCHRUN + [f"--nnodes={nodes}", "--nproc_per_node=8", "--max-restarts=3",
                                   "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-a01:29400", "--rdzv-id=slurm-123",
                                   TRAIN, "/data", "--config", f"{REPO}/configs/imagenet18/{nodes}x8.yaml"]


def test_slurm_requeued_job_resumes():
    r = launch("launch/slurm.sbatch", "/data", SLURM_NNODES="8", SLURM_JOB_ID="9", HEAD_NODE="h",
               SLURM_RESTART_COUNT="1")
    assert r.returncode == 0, r.stderr
    assert shlex.split(r.stdout.strip().splitlines()[-1])[-2:] == ["--resume", "auto"], r.stdout


def test_slurm_ignores_a_node_rank_left_in_the_environment():
    """sbatch passes the submitting shell's environment to every node: a NODE_RANK (and MASTER_ADDR)
    left there from a static-rendezvous run made multinode.sh run `--node-rank=0 --master-addr=OLD` on
    every node, RDZV_ENDPOINT ignored: every node the same rank, a rendezvous that never completes."""
    r = launch("launch/slurm.sbatch", "/data", SLURM_NNODES="8", SLURM_JOB_ID="9", HEAD_NODE="h",
               NODE_RANK="0", MASTER_ADDR="old-head", MASTER_PORT="1234")
    assert r.returncode == 0, r.stderr
    torchrun = shlex.split(r.stdout.strip().splitlines()[-1])
    assert "--rdzv-endpoint=h:29400" in torchrun and not any(a.startswith(("--node-rank", "--master")) for a in torchrun)


NO_SYSFS_NET = pytest.mark.skipif(not os.path.isdir("/sys/class/net"), reason="no /sys/class/net: IFNAME unchecked")


@pytest.mark.parametrize("script,env,message", [
    ("launch/multinode.sh", {"NNODES": "8", "NODE_RANK": "1", "MASTER_ADDR": "n0", "RDZV_ENDPOINT": "n0:29400",
                             "DATA": "x"}, "NODE_RANK=1 (static rendezvous) and RDZV_ENDPOINT=n0:29400 (c10d) are both set"),
    ("launch/local.sh", {}, "usage:"),
    ("launch/multinode.sh", {"NNODES": "8"}, "usage:"),
    ("launch/local.sh", {"NPROC": "two", "DATA": "x"}, "NPROC=two: expected a positive integer"),
    ("launch/local.sh", {"NPROC": "0", "DATA": "x"}, "NPROC=0: expected a positive integer"),
    ("launch/local.sh", {"NPROC": "2", "DATA": "--logdir"}, "usage:"),  # DATA first, not a flag
    ("launch/local.sh", {"NPROC": "2", "MAX_RESTARTS": "abc", "DATA": "x"},
     "error: MAX_RESTARTS=abc: expected an integer >= 0"),
    ("launch/multinode.sh", {"NNODES": "8", "RDZV_ENDPOINT": "h:1", "MAX_RESTARTS": "three", "DATA": "x"},
     "MAX_RESTARTS=three: expected an integer"),
    ("launch/multinode.sh", {"NNODES": "3", "RDZV_ENDPOINT": "h:1", "DATA": "x"},
     f"no config {REPO}/configs/imagenet18/3x8.yaml"),
    ("launch/multinode.sh", {"RDZV_ENDPOINT": "h:1", "DATA": "x"}, "error: set NNODES (number of machines)"),
    ("launch/multinode.sh", {"NNODES": "8", "DATA": "x"}, "error: set RDZV_ENDPOINT"),
    ("launch/multinode.sh", {"NNODES": "8", "RDZV_ENDPOINT": "", "DATA": "x"}, "error: set RDZV_ENDPOINT"),
    ("launch/multinode.sh", {"NNODES": "2", "NPROC_PER_NODE": "0", "RDZV_ENDPOINT": "h:1", "DATA": "x"},
     "NPROC_PER_NODE=0: expected a positive integer"),
    ("launch/multinode.sh", {"NNODES": "8", "NODE_RANK": "1", "DATA": "x"},
     "error: static rendezvous (NODE_RANK set) needs MASTER_ADDR"),
    ("launch/multinode.sh", {"NNODES": "4", "NODE_RANK": "abc", "MASTER_ADDR": "n0", "DATA": "x"},
     "error: NODE_RANK=abc: expected an integer in 0..3"),
    ("launch/multinode.sh", {"NNODES": "4", "NODE_RANK": "4", "MASTER_ADDR": "n0", "DATA": "x"},  # would wait for ever
     "error: NODE_RANK=4: expected an integer in 0..3"),
    ("launch/multinode.sh", {"NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "n0", "MASTER_PORT": "65536", "DATA": "x"},
     "error: MASTER_PORT=65536: expected an integer in 1..65535"),
    ("launch/multinode.sh", {"NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "n0", "MASTER_PORT": "http", "DATA": "x"},
     "error: MASTER_PORT=http: expected an integer in 1..65535"),
    *[("launch/multinode.sh", {"NNODES": "4", "RDZV_ENDPOINT": ep, "DATA": "x"},
       f"error: RDZV_ENDPOINT={ep}: expected host[:port] ([IPv6]:port), the port in 1..65535")
      for ep in ("127.0.0.1:notaport", "h:0", "h:65536", "h:", ":29400", "node 0:29400", "[::1]:x")],
    pytest.param("launch/local.sh", {"NPROC": "8", "IFNAME": "nosuch0", "DATA": "x"},
                 "error: IFNAME=nosuch0: no such network interface here (there are: ", marks=NO_SYSFS_NET),
    pytest.param("launch/multinode.sh", {"NNODES": "4", "RDZV_ENDPOINT": "h:1", "IFNAME": "nosuch0", "DATA": "x"},
                 "error: IFNAME=nosuch0: no such network interface here (there are: ", marks=NO_SYSFS_NET),
    ("launch/slurm.sbatch", {"DATA": "x"}, "error: not inside a Slurm allocation: submit with sbatch"),
])
def test_bad_launch_options(tmp_path, script, env, message):
    """One line and exit 2 (not bash's `line 39: NNODES: ...` and 1), before train.py --check (seconds)
    and torchrun (its usage, a traceback from every rank, or a rendezvous that waits for ever)."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\ntouch "$0.ran"\n')
    python.chmod(0o755)
    args = [env.pop("DATA")] if "DATA" in env else []
    r = launch(script, *args, LAUNCH_DRY_RUN="", PYTHON=str(python), **env)
    lines = r.stderr.splitlines()
    assert (r.returncode, len(lines)) == (2, 1) and lines[0].startswith(("error: ", "usage: ")), r.stderr
    assert message in lines[0]
    assert not (tmp_path / "python.ran").exists()


@NO_SYSFS_NET
def test_a_missing_interface_is_said_with_those_there_are(tmp_path):
    python = _torchrun_stub(tmp_path, 'touch "$0.ran"\n')
    r = launch("launch/local.sh", "x", LAUNCH_DRY_RUN="", PYTHON=str(python), NPROC="8", IFNAME="nosuch0")
    there = r.stderr.strip().rsplit("(there are: ", 1)[-1].rstrip(")").split()
    assert r.returncode == 2 and sorted(there) == sorted(os.listdir("/sys/class/net")), r.stderr


@pytest.mark.parametrize("ifname", [pytest.param("lo", marks=NO_SYSFS_NET), "^docker", "=nosuch0", "nosuch0,lo"])
def test_nccls_interface_forms_pass_unchecked(tmp_path, ifname):
    """A plain name must be an interface here (gloo reads it exactly); NCCL's prefix forms and lists
    cannot be checked against gloo's reading, so they pass as given."""
    python = _torchrun_stub(tmp_path, 'echo "$NCCL_SOCKET_IFNAME $GLOO_SOCKET_IFNAME" > "$0.ifname"\n')
    r = launch("launch/local.sh", "x", LAUNCH_DRY_RUN="", PYTHON=str(python), NPROC="2", IFNAME=ifname,
               CONFIG="configs/tiny_cpu.yaml")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "python.ifname").read_text() == f"{ifname} {ifname}\n"


@pytest.mark.parametrize("endpoint", ["node0", "node0:29400", "n-0.example_1.com:65535", "10.0.0.1:1", "[::1]:29400",
                                      "[::1]"])
def test_rendezvous_endpoints_torchrun_reads_pass(endpoint):
    _, cmd = dry_run("launch/multinode.sh", "/data", NNODES="2", RDZV_ENDPOINT=endpoint,
                     CONFIG="configs/tiny_cpu.yaml")
    assert f"--rdzv-endpoint={endpoint}" in cmd


def test_static_rendezvous_bounds_pass_at_their_ends():
    for rank, port in (("0", "1"), ("15", "65535")):
        _, cmd = dry_run("launch/multinode.sh", "/data", NNODES="16", NODE_RANK=rank, MASTER_ADDR="n0",
                         MASTER_PORT=port)
        assert f"--node-rank={rank}" in cmd and f"--master-port={port}" in cmd


def test_gpu_pipeline_script_commands_parse():
    """Every command launch/bench_pipeline.sh would run on a lent GPU names flags and choices the
    bench accepts and test files that exist: a typo there costs a GPU session's minutes."""
    from training.bench import build_parser
    r = run_bounded(["bash", "launch/bench_pipeline.sh"], cwd=REPO, timeout=30, env={**os.environ, "BENCH_DRY_RUN": "1"})
    assert r.returncode == 0, r.stderr
    steps = [shlex.split(line) for line in r.stdout.strip().splitlines()]
    assert len(steps) == 8
    for argv in steps:
        assert argv[:2] == ["timeout", argv[1]] and int(argv[1]) > 0
        if argv[2:5] == ["python3", "-m", "training.bench"]:
            args = build_parser().parse_args(argv[5:])  # argparse exits 2 on a bad flag or choice
            tree_only = args.loader == [] and args.e2e_loader is None  # the tree step: generates, measures nothing
            assert args.command == "pipeline" and (tree_only or args.json.startswith("runs/bench-pipeline/"))
        else:
            assert argv[2:5] == ["python3", "-m", "pytest"] and (REPO / argv[-1]).is_file()


def test_gpu_pipeline_script_makes_the_tree_first_and_keeps_to_its_budget(tmp_path):
    """The tree is a step of its own before any bench step (its generation ate the loaders' timeout),
    and no step runs past BUDGET (the device call's 600 s would cut the whole call instead)."""
    fake = tmp_path / "bin" / "python3"  # records each command; nvidia-smi is absent or harmless
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\nexit "${FAKE_RC:-0}"\n')
    fake.chmod(0o755)

    def steps(budget: str, rc: str = "0") -> tuple[int, list[str]]:
        out = tmp_path / f"out{budget}-{rc}"
        env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
               "OUT": str(out), "STEPS": "full,e2e", "BUDGET": budget, "FAKE_RC": rc}
        r = run_bounded(["bash", "launch/bench_pipeline.sh"], cwd=REPO, timeout=30, env=env)
        return r.returncode, [ln for ln in (out / "log.txt").read_text().splitlines() if ln.startswith("== ")]

    rc, said = steps("100")
    ran = [shlex.split(ln[3:]) for ln in said if ln.startswith("== timeout")]
    assert rc == 0 and len(ran) == 3
    # the stand-in python3 returns at once, so ~100 s are left at every step
    assert ran[0][-1] == "--loader" and "--json" not in ran[0] and 90 < int(ran[0][1]) <= 100  # the tree: 180, cut
    assert "--source" in ran[1] and ran[1][1] == "90"  # its own timeout fits what is left
    assert "--end-to-end" in ran[2] and 90 < int(ran[2][1]) <= 100  # 330, cut
    rc, said = steps("100", rc="3")  # every step fails: so does the script, though each step ran
    assert rc == 1 and [ln.split()[:3] for ln in said if ln.startswith("== rc")] == [["==", "rc", "3"]] * 3
    rc, said = steps("10")
    assert rc == 1 and said == ["== skipped tree: BUDGET (10 s) spent", "== skipped full: BUDGET (10 s) spent",
                                "== skipped e2e: BUDGET (10 s) spent"]


def _tree(root):
    for split in ("train", "validation"):
        (root / split / "c0").mkdir(parents=True)
    return root


def _check_then_record(tmp_path):
    """A PYTHON that runs train.py --check for real and only records any other command (torchrun)."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nfor a; do [ "$a" = --check ] && exec {sys.executable} "$@"; done\n'
                    'printf "%s\\n" "$@" > "$0.args"\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("case,said", [
    ("no_data", "error: data dir {tmp}/missing/train does not exist (phase at epoch 0)"),
    ("logdir_in_use", "error: logdir {tmp}/run already holds a run (train.log): continue it with --resume auto, "
                      "or start a new run with --logdir NEW_DIR"),
    ("no_resume_file", "error: checkpoint {tmp}/gone.pt: no such file"),
])
def test_what_a_start_meets_on_disk_is_said_once_before_torchrun(tmp_path, case, said):
    """A missing DATA folder, a logdir holding another run, a missing --resume file: found once by
    --check, not by every rank of every restart attempt (rc 1 and torchrun's traceback)."""
    data = _tree(tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("an older run\n")
    argv = {"no_data": [str(tmp_path / "missing"), "--logdir", str(tmp_path / "new")],
            "logdir_in_use": [str(data), "--logdir", str(tmp_path / "run")],
            "no_resume_file": [str(data), "--logdir", str(tmp_path / "new"), "--resume", str(tmp_path / "gone.pt")]}
    r = run_bounded(["bash", "launch/local.sh", *argv[case]], cwd=REPO, timeout=60,
                    env={**os.environ, "PYTHON": str(_check_then_record(tmp_path)), "NPROC": "2",
                         "CONFIG": "configs/tiny_cpu.yaml"})
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, [said.format(tmp=tmp_path)])
    assert not (tmp_path / "python.args").exists()  # torchrun never started
    assert not (tmp_path / "new").exists()


def test_a_machine_rejoining_its_group_is_not_refused_for_its_own_run(tmp_path):
    """multinode.sh re-run on a restarted machine, without RESUME, finds its job's run in the logdir
    (and a --resume file may be on rank 0's machine only): the ranks judge those (OPERATIONS, "How
    restarts work"), so its check passes them and torchrun starts. A missing DATA is still refused."""
    data = _tree(tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("this job's run\n")
    env = {**os.environ, "PYTHON": str(_check_then_record(tmp_path)), "NNODES": "2",
           "RDZV_ENDPOINT": "node0:29400", "CONFIG": "configs/tiny_cpu.yaml"}
    r = run_bounded(["bash", "launch/multinode.sh", str(data), "--logdir", str(tmp_path / "run"), "--resume",
                     str(tmp_path / "on-node0.pt")], cwd=REPO, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "python.args").read_text().split("\n")
    assert args[-5:-1] == ["--logdir", str(tmp_path / "run"), "--resume", str(tmp_path / "on-node0.pt")]
    (tmp_path / "python.args").unlink()
    r = run_bounded(["bash", "launch/multinode.sh", str(tmp_path / "missing")], cwd=REPO, timeout=60, env=env)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: data dir {tmp_path}/missing/train does not exist "
                                                   "(phase at epoch 0)")
    r = run_bounded(["bash", "launch/multinode.sh", str(data), "--evaluate"], cwd=REPO, timeout=60, env=env)
    assert (r.returncode, r.stderr.strip()) == (2, "error: --evaluate (-e) evaluates a checkpoint: give --resume "
                                                   "PATH, or --resume auto for the logdir's newest")
    assert not (tmp_path / "python.args").exists()


def test_relative_paths_stay_the_callers(tmp_path):
    """DATA, CONFIG and --logdir relative to where the launcher is run (it used to cd to the repo,
    so `bash ~/fast/launch/local.sh data` looked for the repo's data/ and wrote the repo's runs/)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\npwd > "$0.cwd"\nprintf "%s\\n" "$@" > "$0.args"\n')
    fake.chmod(0o755)
    (tmp_path / "my.yaml").write_text("phases: []\n")
    r = run_bounded(["bash", str(REPO / "launch" / "local.sh"), "data", "--logdir", "runs/a"], cwd=tmp_path,
                    timeout=30, env={**os.environ, "PYTHON": str(fake), "NPROC": "1", "CONFIG": "my.yaml"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "python.cwd").read_text().strip() == str(tmp_path)
    args = (tmp_path / "python.args").read_text().split("\n")
    assert args[args.index(f"{REPO}/training/train.py"):-1] == [f"{REPO}/training/train.py", "data", "--config",
                                                                "my.yaml", "--logdir", "runs/a"]


def test_visible_devices_set_the_process_count():
    _, cmd = dry_run("launch/local.sh", "/data", CUDA_VISIBLE_DEVICES="2,5")
    assert "--nproc_per_node=2" in cmd


@pytest.mark.parametrize("script,env", [("launch/local.sh", {"NPROC": "2"}),
                                        ("launch/multinode.sh", {"NNODES": "1", "RDZV_ENDPOINT": "127.0.0.1:1"})])
@pytest.mark.parametrize("bad,said", [
    (["--workers", "-1"], "error: --workers: config key 'data.workers': must be >= 0, got -1"),
    # a setting only the recipe checks (it needs torchvision's model list), not the config's types
    (["--arch", "resnt50"], "error: unknown --arch 'resnt50': not a torchvision classification model"),
])
def test_a_bad_command_line_is_said_once_before_torchrun(tmp_path, script, env, bad, said):
    """Not by every rank of every restart attempt (4 attempts x 2 ranks, then torchrun's traceback)."""
    r = run_bounded(["bash", script, str(tmp_path), *bad], cwd=REPO, timeout=60,
                    env={**os.environ, "PYTHON": sys.executable, "CONFIG": "configs/tiny_cpu.yaml", **env})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [said]


NO_GPU_DRIVER = not any(os.path.exists(d) for d in ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")) \
    and subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode != 0


def _main_job(tmp_path, met: bool = True, gpu: bool = False, pip_ok: bool = True, met_without_dali: bool = True,
              cwd=REPO, args=(), **env):
    """launch/cifar10.sh with python3 (and nvidia-smi) stubbed: (result, the python3 calls it made);
    each call's working directory is appended to tmp_path/cwds. ``env`` overrides (None: unset)."""
    bin_dir, calls, data = tmp_path / "bin", tmp_path / "calls", tmp_path / "data"
    bin_dir.mkdir(exist_ok=True)
    (data / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)  # materialised already
    stubs = {"python3": f'echo "$*" >> {calls}\npwd >> {tmp_path / "cwds"}\n'
                        f'case "$*" in *"launch/requirements_met.py --without"*) exit {0 if met_without_dali else 1};;\n'
                        f'  *launch/requirements_met.py*) exit {0 if met else 1};;\n'
                        f'  "-m pip"*) exit {0 if pip_ok else 1};; esac\nexit 0\n'}
    if gpu:
        stubs["nvidia-smi"] = "exit 0\n"
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DATA": str(data), **env}
    r = run_bounded(["bash", str(REPO / "launch" / "cifar10.sh"), *args], cwd=cwd, timeout=30,
                    env={k: v for k, v in env.items() if v is not None})
    return r, calls.read_text().splitlines()


@pytest.mark.skipif(not NO_GPU_DRIVER, reason="this machine has a GPU driver")
@pytest.mark.parametrize("met, gpu", [(True, False), (False, False), (True, True)])
def test_the_main_job_asks_pip_and_torch_only_when_needed(tmp_path, met, gpu):
    """launch/cifar10.sh: pip runs only when a requirement is missing or too old, and torch is imported
    to look for CUDA only where a GPU driver is (each costs seconds of every run)."""
    r, said = _main_job(tmp_path, met, gpu)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    assert said[0] == f"{REPO}/launch/requirements_met.py {REPO}/requirements.txt"
    pip = [f"-m pip install --quiet --disable-pip-version-check -r {REPO}/requirements.txt"]
    cuda = ["-c import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"]
    assert said[1:-1] == (pip if not met else []) + (cuda if gpu else [])
    config = "configs/cifar10.yaml" if gpu else "configs/cifar10_cpu.yaml"
    assert said[-1].startswith(f"{REPO}/training/train.py --config {REPO}/{config} --data {data} "
                               f"--logdir {REPO}/runs/cifar10-")


@pytest.mark.skipif(not NO_GPU_DRIVER, reason="this machine has a GPU driver")
@pytest.mark.parametrize("met_without_dali", [True, False])
def test_the_main_job_goes_on_without_dali_where_pip_cannot_install_it(tmp_path, met_without_dali):
    """An offline machine without DALI (the lent GPU machine): pip fails, and the CIFAR job, which does not
    read DALI, trains anyway; anything else missing stops it, after pip's own error."""
    r, said = _main_job(tmp_path, met=False, gpu=False, pip_ok=False, met_without_dali=met_without_dali)
    assert said[2] == f"{REPO}/launch/requirements_met.py --without nvidia-dali-cuda130 {REPO}/requirements.txt"
    if met_without_dali:
        assert r.returncode == 0, r.stderr
        assert "going on without DALI" in r.stderr
        assert said[-1].startswith(f"{REPO}/training/train.py --config {REPO}/configs/cifar10_cpu.yaml")
    else:
        assert r.returncode == 1
        assert len(said) == 3  # no training


def test_the_main_job_reads_relative_paths_from_where_it_is_run(tmp_path):
    """As with any command (docs/OPERATIONS.md): it used to cd to the repo, so `DATA=rel` fetched into
    the repo's rel/ and `--logdir mylog` wrote the repo's mylog/. Its defaults are the repo's data/
    and runs/, wherever it is run from (README's `bash launch/cifar10.sh`)."""
    here = tmp_path / "here"
    here.mkdir()
    shared = tmp_path / "shared"
    (shared / "datasets" / "cifar10").mkdir(parents=True)
    (shared / "datasets" / "cifar10" / "materialize.py").write_text("")
    r, said = _main_job(tmp_path, cwd=here, args=("--logdir", "mylog"), DATA="rel", SHARED_DIR=str(shared))
    assert r.returncode == 0, r.stderr
    assert set((tmp_path / "cwds").read_text().split()) == {str(here)}
    assert f"{shared}/datasets/cifar10/materialize.py rel" in said
    train = said[-1].split()
    assert train[0] == f"{REPO}/training/train.py" and train[3:5] == ["--data", "rel"]
    assert train[5] == "--logdir" and train[-2:] == ["--logdir", "mylog"]  # the last --logdir wins
    assert not (REPO / "rel").exists()
    (tmp_path / "calls").unlink()
    r, said = _main_job(tmp_path, cwd=here, DATA=None, SHARED_DIR=str(tmp_path / "no-shared"))
    assert r.returncode == 0, r.stderr
    train = said[-1].split()
    assert train[3:6] == ["--data", f"{REPO}/data", "--logdir"] and train[6].startswith(f"{REPO}/runs/cifar10-")


@pytest.mark.parametrize("lines, met", [
    (["pyyaml>=6.0", "pytest>=7.4  # why", "# a comment", ""], True),
    (["pyyaml>=999"], False),                                     # too old
    (["pyyaml<1"], False),                                        # too new
    (["no-such-distribution-here>=1"], False),                    # missing
    (['no-such-distribution-here>=1; platform_system == "NoSuchOS"'], True),  # not for this platform
    (["-e ."], False),                                            # an option: pip's to read
    (["pytest[testing]>=7"], False),                              # extras' dependencies: pip's to check
    (["--without", "No_Such.Distribution-here", "no-such-distribution-here>=1", "pyyaml>=6.0"], True),
    (["--without", "pyyaml", "no-such-distribution-here>=1"], False),  # only the one named is let be
    (["pyyaml @ https://example.invalid/PyYAML-6.0-py3-none-any.whl"], False),  # a direct reference: pip's
])
def test_requirements_met_answers_only_what_it_can_read(tmp_path, lines, met):
    flags = lines[:2] if lines[0] == "--without" else []
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(lines[len(flags):]) + "\n")
    r = run_bounded([sys.executable, "launch/requirements_met.py", *flags, str(reqs)], cwd=REPO, timeout=30)
    assert (r.returncode, r.stderr) == (0 if met else 1, ""), r.stderr


def test_requirements_met_without_a_file_to_read_is_no(tmp_path):
    """No file, or one it cannot open, answers 1 (pip decides), quietly: the launcher says what happens."""
    for args in ([], ["--without", "pyyaml"], [str(tmp_path / "gone.txt")]):
        r = run_bounded([sys.executable, "launch/requirements_met.py", *args], cwd=REPO, timeout=30)
        assert (r.returncode, r.stderr) == (1, ""), args


def test_requirements_met_by_an_installed_prerelease(tmp_path):
    """NGC containers ship torch as 2.x.0a0+git...: it meets torch>=2.4, as pip judges an installed
    prerelease; answering 1 would have pip reinstall torch over the container's own build."""
    site = tmp_path / "site"
    (site / "fake_pre_dist-2.0a0+git1.dist-info").mkdir(parents=True)
    (site / "fake_pre_dist-2.0a0+git1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-pre-dist\nVersion: 2.0a0+git1\n")
    (tmp_path / "requirements.txt").write_text("fake-pre-dist>=1.0\n")
    r = run_bounded([sys.executable, "launch/requirements_met.py", str(tmp_path / "requirements.txt")], cwd=REPO,
                    timeout=30, env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr


def test_requirements_met_by_the_test_environment():
    """The suite runs after `pip install -r requirements.txt -r requirements-test.txt` (README)."""
    r = run_bounded([sys.executable, "launch/requirements_met.py", "requirements.txt", "requirements-test.txt"],
                    cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr


def _torchrun_stub(tmp_path, body: str):
    """A PYTHON whose `train.py --check` passes and which runs the sh ``body`` in torchrun's place."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor a; do [ "$a" = --check ] && exit 0; done\n' + body)
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("script, env, procs", [
    ("launch/local.sh", {"NPROC": "3"}, "3"),
    ("launch/multinode.sh", {"NNODES": "2", "NPROC_PER_NODE": "5", "RDZV_ENDPOINT": "127.0.0.1:1"}, "5"),
])
def test_the_launchers_check_asks_for_a_gpu_per_process_of_this_machine(tmp_path, script, env, procs):
    """--check counts this machine's GPUs against the processes torchrun will start here
    (LOCAL_WORLD_SIZE), before torchrun: one short refuses before joining the group (refusal.py)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nfor a; do [ "$a" = --check ] && { echo "$LOCAL_WORLD_SIZE" > "$0.check"; exit 0; }; done\nexit 0\n')
    fake.chmod(0o755)
    r = run_bounded(["bash", script, str(tmp_path)], cwd=REPO, timeout=30,
                    env={**os.environ, "PYTHON": str(fake), "CONFIG": "configs/tiny_cpu.yaml", **env})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "python.check").read_text() == procs + "\n"


REFUSAL = "error: rank 1: class folder holds no images: /data/validation/n01"
FAILED = "E1127 19:01:06.512000 29585 api.py:1002] failed (exitcode: 2) local_rank: 0 (pid: 29596) of binary: python3"


@pytest.mark.parametrize("body,status,said", [
    # a rank refused and torchrun failed when its restarts were spent (several machines): 2, and the
    # line again, last, below torchrun's own report
    (f'echo "{REFUSAL}" >> "$FASTIMAGENET_REFUSED"\necho "ChildFailedError" >&2\nexit 1\n',
     2, ["ChildFailedError", REFUSAL]),
    # a rank refused and the restart ended the group: torchrun exits 0; 2, and the line again, last,
    # below torchrun's report of the failed attempt
    (f'echo "{REFUSAL}" >&2\necho "{REFUSAL}" >> "$FASTIMAGENET_REFUSED"\necho "{FAILED}" >&2\nexit 0\n',
     2, [REFUSAL, FAILED, REFUSAL]),
    # no refusal: torchrun's own status
    ("exit 0\n", 0, []), ("exit 1\n", 1, []), ("exit 7\n", 7, []),
])
def test_a_refusal_a_rank_notes_ends_the_launch_with_status_2(tmp_path, body, status, said):
    """What --check cannot see (inside the images) is refused by the ranks, which note it in the file
    FASTIMAGENET_REFUSED names (refusal.refuse); torchrun itself exits only 0 or 1. The note is removed."""
    (tmp_path / "tmp").mkdir()
    r = run_bounded(["bash", "launch/local.sh", str(tmp_path)], cwd=REPO, timeout=30,
                    env={**os.environ, "PYTHON": str(_torchrun_stub(tmp_path, body)), "NPROC": "2",
                         "CONFIG": "configs/tiny_cpu.yaml", "TMPDIR": str(tmp_path / "tmp")})
    assert (r.returncode, r.stderr.splitlines()) == (status, said)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_launch_without_a_place_for_its_note_is_refused_before_torchrun(tmp_path):
    r = run_bounded(["bash", "launch/local.sh", str(tmp_path)], cwd=REPO, timeout=30,
                    env={**os.environ, "PYTHON": str(_torchrun_stub(tmp_path, 'touch "$0.ran"\n')), "NPROC": "2",
                         "CONFIG": "configs/tiny_cpu.yaml", "TMPDIR": str(tmp_path / "missing")})
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"error: cannot create a file in {tmp_path / 'missing'} "
                                         "(set TMPDIR to a writable folder)")
    assert not (tmp_path / "python.ran").exists()


@pytest.mark.parametrize("script,env", [("launch/local.sh", {"NPROC": "2"}),
                                        ("launch/multinode.sh", {"NNODES": "2", "RDZV_ENDPOINT": "127.0.0.1:1"})])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("group", [False, True], ids=["launcher", "group"])
def test_a_signal_to_the_launcher_stops_torchrun_once(tmp_path, script, env, sig, group):
    """The launcher waits on torchrun (to give its status) instead of becoming it, so a signal sent to
    the launcher alone (`kill PID`, `docker stop`, a batch system) must reach torchrun as TERM, which
    stops its workers. A terminal's Ctrl-C signals the launcher's whole process group: torchrun, in
    its own session, gets it once, from the launcher (torchrun signalled twice cuts its own shutdown
    short and prints two tracebacks). The launcher then says what stopped the run and exits
    128 + that signal (torchrun exits 1 when signalled), and nothing is left running."""
    body = "".join(f'trap \'echo {s} >> "$0.got"{"; exit 1" if s == "TERM" else ""}\' {s}\n'
                   for s in ("TERM", "INT", "HUP")) + 'touch "$0.started"\nwhile :; do sleep 0.05; done\n'
    tag = f"FASTIMAGENET_TEST_PROC_{uuid.uuid4().hex}"
    # a shell cannot trap a signal ignored when it started (INT in a background job, HUP under nohup,
    # as a CI runner may start these tests): the launcher starts with the defaults a terminal gives
    p = subprocess.Popen(["bash", script, str(tmp_path)], cwd=REPO, start_new_session=True,
                         preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHON": str(_torchrun_stub(tmp_path, body)),
                              "CONFIG": "configs/tiny_cpu.yaml", tag: "1", **env})
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "python.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (os.killpg if group else os.kill)(p.pid, sig)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 128 + sig
        assert err.splitlines()[-1] == f"stopped by {sig.name}; continue the run with RESUME=auto (--resume auto)"
        assert (tmp_path / "python.got").read_text() == "TERM\n"
        deadline = time.monotonic() + 5  # a last `sleep` of the stub's may outlive it briefly
        while tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tagged(tag)
    finally:
        kill_tagged(tag)  # whatever the launcher left behind, so a failure leaks nothing


def test_a_run_that_ends_well_as_the_launcher_is_signalled_keeps_its_status(tmp_path):
    """torchrun done (0) by the time the signal's TERM reaches it: the run is not called stopped."""
    body = 'touch "$0.started"\ntrap \'exit 0\' TERM\nwhile :; do sleep 0.05; done\n'
    p = subprocess.Popen(["bash", "launch/local.sh", str(tmp_path)], cwd=REPO, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHON": str(_torchrun_stub(tmp_path, body)), "NPROC": "2",
                              "CONFIG": "configs/tiny_cpu.yaml"})
    deadline = time.monotonic() + 20
    while not (tmp_path / "python.started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert (p.returncode, err) == (0, "")


@pytest.fixture
def refusal_note(tmp_path, monkeypatch):
    """The file a launcher names in FASTIMAGENET_REFUSED, empty, and this process a rank of 2."""
    from training import refusal
    note = tmp_path / "refused"
    note.write_text("")
    monkeypatch.setenv(refusal.ENV, str(note))
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "r1"}.items():
        monkeypatch.setenv(k, v)
    return note


def test_a_rank_that_refuses_notes_its_line_even_when_another_says_it(refusal_note, capsys):
    """A command-line error is said by rank 0 alone, but every refusing rank notes it, so the
    launcher of each machine knows (rank 0 may be on another)."""
    from training import train
    assert train.main(["--config", "configs/tiny_cpu.yaml", "train.print_freq=0"]) == 2
    assert capsys.readouterr().err == ""  # rank 1
    assert refusal_note.read_text() == "error: config key 'train.print_freq': must be >= 1, got 0\n"


@pytest.mark.parametrize("world,local,status", [("2", "2", 0), ("16", "8", None)])
def test_a_restart_of_a_refused_launch_ends_before_any_work(refusal_note, monkeypatch, capsys, world, local, status):
    """One machine: every rank reads the note and exits 0, so torchrun ends without restarting and
    the launcher says 2. Several: a rank that quit before joining the group would leave the other
    machines' ranks waiting for it for the whole collective timeout, so the restart goes on until
    the group has shared the note (test_multinode.py)."""
    from training import refusal, train
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    argv = ["--config", "configs/tiny_cpu.yaml", "--dry-run"]  # work that would print a plan
    assert refusal.restart_on_one_machine() is None  # an empty note: the first attempt
    assert train.main(argv) == 0 and capsys.readouterr().out
    refusal_note.write_text(REFUSAL + "\n")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # not a torchrun worker: whatever the note says, go on
    assert refusal.restart_on_one_machine() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r1")
    assert refusal.restart_on_one_machine() == status
    if status is None:
        assert train.main(argv) == 0 and capsys.readouterr().out
    else:
        assert train.main(argv) == status and capsys.readouterr() == ("", "")


def test_the_note_keeps_each_refusing_ranks_line_and_the_first_is_read(refusal_note):
    """Ranks of one machine refuse at about the same time, each with its own line (its shard, its
    disk): appended, not overwritten, so the launcher says the first one noted."""
    from training import refusal
    assert refusal.refuse("error: rank 0: first", say=False) == refusal.refuse("error: rank 1: second", say=False) == 2
    assert refusal_note.read_text() == "error: rank 0: first\nerror: rank 1: second\n"
    assert refusal.noted() == "error: rank 0: first"


def test_a_refusal_naming_a_file_whose_name_is_not_utf8_is_noted_as_its_bytes(refusal_note):
    """A path from os.walk holds its undecodable bytes as surrogates: noting the line must not raise
    (a traceback, no note, and the launcher's restarts meet it again); the launcher prints the name's
    own bytes, as ls would, and a restart reads the line back. (stderr says it backslash-escaped.)"""
    from training import refusal
    line = "error: rank 1: unreadable image /data/a/\udcff.JPEG: truncated file"
    assert refusal.refuse(line, say=False) == 2
    assert refusal_note.read_bytes() == b"error: rank 1: unreadable image /data/a/\xff.JPEG: truncated file\n"
    assert refusal.noted() == "error: rank 1: unreadable image /data/a/\ufffd.JPEG: truncated file"


def test_a_note_that_cannot_be_written_refuses_all_the_same(refusal_note, monkeypatch, capsys):
    """The launcher then exits as torchrun does, but the rank still says its line and exits 2."""
    from training import refusal
    monkeypatch.setenv(refusal.ENV, str(refusal_note / "not-a-dir"))
    assert refusal.refuse("error: bad") == 2 and capsys.readouterr().err == "error: bad\n"
