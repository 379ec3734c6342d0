"""The imagenet18 recipe: ResNet-50 (or any torchvision model), progressive resizing, DDP.

Builds the model, optimizer, loaders and checkpointing, restores a checkpoint when resuming
(also on its own after an elastic restart), and hands everything to the shared loop.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from training import checkpoint, dist, loop, refusal
from training.config import Config, ConfigError, dump, refuse_unread, to_dict
from training.data import DataError, LoaderSpec, PhaseLoaders, get_backend, split_dir
from training.data.tree import check_same_classes, find_classes, index_later_phases
from training.files import write_atomic
from training.logs import (LogdirLock, RunLogger, check_logdir, check_logdir_free, check_logdir_writable,
                          lock_logdir, refuse_reuse)
from training.models import resnet
from training.optim import sgd
from training.phases import Schedule, parse_schedule
from training.profiling import TraceWindow


def check_data_root(root: str, schedule: Schedule, loader: str) -> None:
    if loader == "synthetic":
        return
    if not root:
        raise DataError("no DATA dir given (positional DATA or data.dir=...)")
    dirs = [(ph, split_dir(root, ph.train_dir, "train"), split_dir(root, ph.val_dir, "validation"))
            for ph in schedule.data_phases]
    for ph, train, val in dirs:
        for d in (train, val):
            if not os.path.isdir(d):
                raise DataError(f"data dir {d} does not exist (phase at epoch {ph.start})")
    # A phase's copy of the data (-sz/160 ...) with other class folders would relabel every image
    # from that epoch on (or index past the model's outputs): all must hold the first one's classes.
    first = dirs[0][1]
    classes = find_classes(first)
    for ph, train, val in dirs:
        if train != first:
            check_same_classes(first, classes, train, find_classes(train),
                               ("the first phase's train", f"the epoch-{ph.start} phase's train"))
        check_same_classes(first, classes, val, find_classes(val))


RESUME_CHECKED = ("model.", "optim.", "train.seed", "train.precision")  # what changes the training itself


def changed_settings(saved: dict, now: dict) -> list[str]:
    """'key old -> new' for each setting in RESUME_CHECKED that differs between a checkpoint's
    config and this run's (a changed seed or weight decay on resume is legal but should be seen)."""
    def flat(cfg: dict) -> dict:
        return {f"{s}.{k}": v for s, section in cfg.items() if isinstance(section, dict) for k, v in section.items()}
    old, new = flat(saved), flat(now)
    return [f"{k} {old[k]} -> {v}" for k, v in new.items() if k.startswith(RESUME_CHECKED) and k in old and old[k] != v]


def find_resume(cfg: Config, restarted: bool) -> str:
    """'auto', or an elastic restart (``restarted``: dist.group_attempt's, for the whole group): the
    latest good checkpoint in the logdir. A restarted group prefers the run's own checkpoints to an
    explicit --resume path (where the first attempt began), which it uses only while the logdir
    holds none."""
    resume = cfg.train.resume
    if restarted and (not resume or checkpoint.list_checkpoints(cfg.train.logdir)):
        resume = "auto"
    return resume


def check_fresh(cfg: Config, attempt: dist.Attempt) -> None:
    """Without --resume, a logdir holding a run is refused (logs.refuse_reuse) unless the run is
    this job's own (an elastic restart: its agents are recorded there, before any file of the run is
    written). So when a first attempt is refused, torchrun's restarts are refused too, rather than
    resuming the older run."""
    if not cfg.train.resume and not attempt.own_run:
        refuse_reuse(cfg.train.logdir)


def load_resume(resume: str, cfg: Config, info: dist.DistInfo) -> dict | None:
    """Rank 0 reads the checkpoint and sends it to the others, so ranks on other nodes need no
    shared filesystem; everyone gets the same state or the same error."""
    ckpt, error = None, None
    if info.is_main and resume:
        try:
            if resume == "auto":
                found = checkpoint.latest_good(cfg.train.logdir)
                ckpt = found[1] if found else None
                if found:
                    print(f"resuming from {found[0]}", file=sys.stderr)
                elif cfg.train.evaluate:
                    raise checkpoint.CheckpointError(
                        f"nothing to evaluate: no usable checkpoint in {checkpoint.checkpoint_dir(cfg.train.logdir)}")
                else:
                    print(f"warning: no usable checkpoint in {checkpoint.checkpoint_dir(cfg.train.logdir)}; "
                          "starting from epoch 0", file=sys.stderr)
            else:
                ckpt = checkpoint.load(resume)
            if ckpt is not None and ckpt["arch"] != cfg.model.arch:
                raise checkpoint.CheckpointError(
                    f"checkpoint is for arch {ckpt['arch']!r}, this run is {cfg.model.arch!r}")
        except checkpoint.CheckpointError as e:
            error = str(e)
    ckpt, error = dist.broadcast_object((ckpt, error))
    if error:
        raise checkpoint.CheckpointError(error)
    return ckpt


def build_loaders(cfg: Config, schedule: Schedule, info: dist.DistInfo) -> PhaseLoaders:
    on_gpu = info.device.type == "cuda"
    amp = loop.AMP_DTYPES.get(cfg.train.precision) if on_gpu else None
    spec = LoaderSpec(root=cfg.data.dir, phase=schedule.data_phases[0], rank=info.rank,
                      world_size=info.world_size, device=info.device, workers=cfg.data.workers,
                      seed=cfg.train.seed, dtype=amp or torch.float32,
                      channels_last=on_gpu and cfg.train.channels_last, bad_images=cfg.data.bad_images,
                      timeout_s=cfg.data.timeout_s,
                      synthetic_images=cfg.data.synthetic_images, synthetic_classes=cfg.data.synthetic_classes,
                      dali_fused_crop=cfg.data.dali_fused_crop, dali_hw_load=cfg.data.dali_hw_load)
    backend = get_backend(cfg.data.loader, device=info.device, workers=cfg.data.workers)
    return PhaseLoaders(backend, spec, schedule.data_phases, cfg.data.val_batch_size)


def check_drill_fires(drill: tuple[str, int, int, int], cfg: Config, schedule: Schedule, start_epoch: int,
                      world_size: int, images_at: Callable[[int], int]) -> None:
    """The fault drill's EPOCH and STEP against what this run trains (``images_at``: the training
    images of an epoch's data copy): a drill that never fires would pass for a restart that works.
    --check knows the schedule only; the epochs trained and their steps are known once the data is."""
    _, epoch, step, _ = drill
    spec = f"{dist.FAULT_ENV}={os.environ[dist.FAULT_ENV]!r}"
    end = min(schedule.num_epochs, start_epoch + cfg.train.max_epochs) if cfg.train.max_epochs else schedule.num_epochs
    if not start_epoch <= epoch < end:
        raise ConfigError(f"{spec}: this run trains epochs {start_epoch}..{end - 1}, not {epoch}")
    steps = schedule.iters_per_epoch(epoch, images_at(epoch), world_size)
    if cfg.train.short_epoch:
        steps = min(steps, cfg.train.short_epoch_steps)
    if step >= steps:
        raise ConfigError(f"{spec}: epoch {epoch} has {steps} step{'s' if steps > 1 else ''} per process "
                          f"(STEP 0..{steps - 1})")


def compile_static(model: nn.Module, num_shapes: int) -> nn.Module:
    """torch.compile with static shapes, one graph per training shape. The default (dynamic=None)
    turns the batch dimension symbolic at epoch 0's partial last batch and the spatial ones at the
    first size change, so every later phase would run shape-generic kernels; static graphs are also
    what ``bench throughput`` measures. Dynamo compiles at most 8 graphs per function by default
    and runs further shapes eagerly, so the cap is raised to the schedule's count (imagenet18 8x8
    has 9)."""
    conf = torch._dynamo.config
    name = "recompile_limit" if hasattr(conf, "recompile_limit") else "cache_size_limit"  # 2.4 has only the old name
    setattr(conf, name, max(getattr(conf, name), num_shapes))
    return torch.compile(model, dynamic=False)


def run_metadata(cfg: Config, info: dist.DistInfo) -> dict:
    gpu = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "arch": cfg.model.arch, "gpu": gpu,
            "gpu_count": info.world_size if info.device.type == "cuda" else 0,
            "world_size": info.world_size, "precision": cfg.train.precision, "phases": cfg.phases,
            "host": platform.node(), "command": " ".join(sys.argv)}


def check_config(cfg: Config) -> Schedule:
    """What the command line alone can get wrong (no data, no devices needed): the schedule, the
    architecture's name, the checkpoint cadence. The cifar section, which this recipe does not
    read, must stay at its defaults (--runs 5 or a cifar config's settings were silently ignored)."""
    refuse_unread(cfg, "imagenet", ("cifar",), f"recipe: {cfg.recipe}; the cifar recipe is recipe: cifar")
    # resuming, the checkpoint's phases train, not these (a run begun before a data phase past the end
    # was refused may be resumed with the config it began with): refused only in a new schedule
    schedule = parse_schedule(cfg.phases, trained=bool(cfg.train.resume))
    resnet.check_arch(cfg.model.arch)
    checkpoint.check_cadence(cfg.train.checkpoint_every, cfg.train.checkpoint_min_interval_s)
    dist.check_fault(schedule.num_epochs)  # the drill's spec (its rank once the group's size is known)
    return schedule


def check_start(cfg: Config, schedule: Schedule, own_disk: bool = True) -> None:
    """What ``train.py --check`` reads on disk, as this command started now would (cheap: folder
    listings, no image): every phase's data dirs when DATA is given (a config alone can be checked
    without data), the checkpoint's phases when resuming; with ``own_disk`` (not a machine rejoining
    its group: --rejoin) an explicit --resume PATH, and a writable logdir that, without --resume, is
    free for a new run."""
    resume = cfg.train.resume
    if own_disk and resume not in ("", "auto") and not os.path.isfile(resume):
        raise checkpoint.CheckpointError(f"checkpoint {resume}: " + ("not a file" if os.path.exists(resume)
                                                                     else "no such file"))
    if cfg.data.dir:
        # resuming, the checkpoint's phases train (_train); --rejoin: it need not be on this machine
        trains = saved_schedule(resume, cfg.train.logdir) if own_disk and resume else None
        check_data_root(cfg.data.dir, trains or schedule, cfg.data.loader)
    if not own_disk:
        return
    check_logdir_writable(cfg.train.logdir)
    if not cfg.train.evaluate:  # evaluating takes no lock: it writes nothing
        check_logdir_free(cfg.train.logdir)
    if not resume:  # (--evaluate needs --resume)
        refuse_reuse(cfg.train.logdir)


def saved_schedule(resume: str, logdir: str) -> Schedule | None:
    """The schedule a run resumed from ``resume`` (a path, or 'auto': the logdir's newest checkpoint
    that reads) goes on with: its checkpoint's, read without its tensors. None: nothing to resume."""
    if resume == "auto":
        found = checkpoint.latest_good(logdir, tensors=False, warn=False)
        ckpt = found[1] if found else None
    else:
        ckpt = checkpoint.load(resume, tensors=False)  # the run would refuse it too
    return parse_schedule(ckpt["config"]["phases"], trained=True) if ckpt else None


def main(cfg: Config) -> int:
    # A fresh run's clock (the `first` event, DAWNBench hours) starts here, before the data is indexed
    # and the model built, as imagenet18's did (it logged `first` before any of its set-up).
    launched = time.time()
    schedule = check_config(cfg)  # before anything is printed, indexed or created
    if not cfg.train.resume:  # resuming, the checkpoint's phases train: _train checks theirs
        check_data_root(cfg.data.dir, schedule, cfg.data.loader)
    info = dist.setup(cfg.train.device, cfg.train.dist_timeout_s)
    cfg.train.precision = loop.resolve_precision(info.device, cfg.train.precision)  # config.yaml says what ran
    if info.is_main and (warning := loop.precision_warning(info.device, cfg.train.precision)):
        print(warning, file=sys.stderr)
    created: list[Path] = []
    lock: LogdirLock | None = None
    progress: dict = {}  # _train puts its TrainState here, for the failure message
    try:
        attempt = dist.group_attempt(info, cfg.train.logdir)  # a collective: every rank, once
        if attempt.refused is not None:  # a restart of a refused launch, the same on every rank: each
            refusal.pass_on(attempt.refused)  # ends well, so torchrun ends without another restart
            return 0
        if cfg.train.resume == "auto" or attempt.restarted:  # the same on every rank
            dist.check_logdir_shared(attempt, cfg.train.logdir)
        refused = None
        if info.is_main and not cfg.train.evaluate:  # evaluating writes nothing
            try:
                created = check_logdir(cfg.train.logdir)
                lock = lock_logdir(cfg.train.logdir)  # held until the run ends: one run writes the logdir
                check_fresh(cfg, attempt)  # after the lock: a job on a running run's logdir hears it is in use
            except ConfigError as e:
                refused = str(e)
        # every rank stops on rank 0's refusal, rather than wait for it in a collective and be blamed
        if refused := dist.broadcast_object(refused):
            raise ConfigError(refused)
        return _train(cfg, schedule, info, progress, attempt, launched)
    except Exception as e:
        if lock is not None:
            lock.release()  # first: a logdir this run created goes, lock file and all
        for d in created:  # deepest first; only while still empty: bad input leaves no partial output
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, loop.NonFiniteLoss):
            if info.is_main:
                print(f"error: {e}; the last good checkpoint is kept", file=sys.stderr, flush=True)
            return 1
        if dist.is_peer_failure(e):
            st = progress.get("state")
            where = f"at epoch {st.epoch} (global step {st.step})" if st else "before training"
            print(dist.peer_failure_message(e, info, cfg.train.dist_timeout_s, where), file=sys.stderr, flush=True)
            return 1
        raise
    finally:
        if lock is not None:
            lock.release()
        progress.clear()  # its TrainState holds the DDP wrapper, which teardown collects before the group goes
        dist.teardown()


def _trim_human_log(logdir: str, keep_before: int | None) -> None:
    """Drop the `~~` rows of epochs >= keep_before that a crashed attempt wrote after the checkpoint
    being resumed (None: the whole log, the run starts over), so train.log reads as one run."""
    path = Path(logdir) / "train.log"
    if not path.exists():
        return
    if keep_before is None:
        path.unlink()
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [ln for ln in lines if not ((m := re.match(r"~~(\d+)\t", ln)) and int(m.group(1)) >= keep_before)]
    if len(keep) != len(lines):
        write_atomic(path, "".join(keep))


def _train(cfg: Config, schedule: Schedule, info: dist.DistInfo, progress: dict, attempt: dist.Attempt,
           launched: float) -> int:
    # docs/OPERATIONS.md's drill; None unless asked
    fault = dist.fault_injector(info.rank, attempt.restarted, info.world_size, schedule.num_epochs)
    resume = find_resume(cfg, attempt.restarted)
    ckpt = load_resume(resume, cfg, info)
    start_epoch = ckpt["epoch"] if ckpt else 0
    notes: list[str] = []  # printed once the data, the model and the checkpoint are known to be usable
    if ckpt:
        # The run goes on with the schedule it started with, so lr, size and batch stay consistent;
        # config.yaml and later checkpoints then record that schedule, not the ignored one.
        saved = ckpt["config"]["phases"]
        if list(schedule.raw) != saved:
            notes.append("warning: the phases given differ from the checkpoint's; the run goes on with the "
                         "checkpoint's schedule (to change it, start a new run with --logdir NEW_DIR)")
        if changed := changed_settings(ckpt["config"], to_dict(cfg)):
            notes.append(f"warning: resuming with settings that differ from the checkpoint's: {'; '.join(changed)} "
                         "(the run goes on with the new ones; config.yaml records them)")
        if ckpt.get("world_size", info.world_size) != info.world_size:  # an elastic restart on fewer machines
            notes.append(f"warning: the checkpoint was written by {ckpt['world_size']} processes, this run has "
                         f"{info.world_size}: the schedule's batch sizes are per process, so the global batch "
                         "and the steps per epoch change (resume with the same world size for the same run)")
        schedule = parse_schedule(saved, trained=True)
        cfg = dataclasses.replace(cfg, phases=saved)
        if start_epoch >= schedule.num_epochs and not cfg.train.evaluate:
            if info.is_main:
                print(f"{cfg.train.logdir}: the run is already complete ({start_epoch} of {schedule.num_epochs} "
                      "epochs); nothing to do", file=sys.stderr)
            return 0
    if cfg.train.resume:  # main left it to here: the phases that train are known now
        check_data_root(cfg.data.dir, schedule, cfg.data.loader)
    loaders = build_loaders(cfg, schedule, info)
    train_loader, _ = loaders.for_epoch(min(start_epoch, schedule.num_epochs - 1))
    images: dict[str, int] = {}  # training images per data copy; a synthetic run's are all train_loader's
    if loaders.backend.name != "synthetic" and not cfg.train.evaluate:
        # every later phase's data copy too, before anything is written (docs/OPERATIONS.md, exit 2)
        active = dataclasses.replace(loaders.base, phase=loaders.active)
        images = {active.train_dir: train_loader.num_images,
                  **index_later_phases(active, schedule.data_phases)}
    drill = None if attempt.restarted or cfg.train.evaluate else dist.check_fault(schedule.num_epochs, info.world_size)

    def images_at(epoch: int) -> int:  # the training images of the epoch's data copy
        return images.get(loaders.spec_for(epoch).train_dir, train_loader.num_images)

    if drill:
        check_drill_fires(drill, cfg, schedule, start_epoch, info.world_size, images_at)
    num_classes = cfg.model.num_classes or len(train_loader.classes)
    if num_classes < len(train_loader.classes):
        raise ConfigError(f"model.num_classes={num_classes} is fewer than the {len(train_loader.classes)} class "
                          f"folders of the data (0: one output per folder)")

    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # sizes are fixed within a phase: autotune once per shape
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = resnet.build(cfg.model.arch, num_classes, cfg.model.init_bn0).to(info.device)
    if info.device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = sgd(model, cfg.optim, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.train.precision == "fp16" else None
    if ckpt:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # its first line only says "Error(s) in loading state_dict": name the first
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise checkpoint.CheckpointError(f"checkpoint does not fit {cfg.model.arch} with "
                                             f"{num_classes} classes: {lines[min(1, len(lines) - 1)]}") from None
        # load_state_dict also puts back each group's settings as the checkpoint saved them (weight decay,
        # momentum, nesterov): the run goes on with this run's, as the warning says and config.yaml records
        configured = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError:  # torch's message names neither the groups nor the settings behind them
            saved = [len(g["params"]) for g in ckpt["optimizer"]["param_groups"]]
            now = [len(g["params"]) for g in optimizer.param_groups]
            raise checkpoint.CheckpointError(
                f"checkpoint's optimizer groups hold {saved} tensors, this run's {now}: its weight-decay "
                f"exemptions differ from optim.no_bn_wd={cfg.optim.no_bn_wd} optim.no_bias_wd="
                f"{cfg.optim.no_bias_wd}; resume with the settings it was written with") from None
        for group, settings in zip(optimizer.param_groups, configured):
            group.update(settings)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    if info.is_main:
        for note in notes + loaders.backend.notes:
            print(note, file=sys.stderr)

    forward_model: nn.Module = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        forward_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.train.compile and info.device.type != "cuda" and info.is_main:
        print("compile: train.compile applies on CUDA only; this CPU run is eager", file=sys.stderr)
    if cfg.train.compile and info.device.type == "cuda":
        shapes = schedule.batch_shapes(images_at, info.world_size)
        if info.is_main:
            print(f"compile: one static graph per training shape (per-rank batch, size): {shapes}",
                  file=sys.stderr)
        forward_model = compile_static(forward_model, len(shapes))

    state = loop.TrainState(forward_model, model, optimizer, scaler, schedule,
                            epoch=start_epoch, step=ckpt["step"] if ckpt else 0)
    progress["state"] = state
    # One run across restarts: events a crashed attempt wrote after the checkpoint's step are purged
    # (the checkpoint's own step keeps its evaluation); a restart with no usable checkpoint starts
    # over and purges the earlier attempt. train.log's `~~` rows likewise. Evaluating changes nothing.
    purge = None
    if not cfg.train.evaluate:
        # --resume auto that found no checkpoint (a requeued job preempted before its first) starts over too
        purge = state.step + 1 if ckpt else (0 if attempt.restarted or resume else None)
    if info.is_main and purge is not None:
        _trim_human_log(cfg.train.logdir, start_epoch if ckpt else None)
    writes = info.is_main and not cfg.train.evaluate
    if writes:  # first: any file of the run in the logdir is then known as this job's (check_fresh)
        dist.record_attempt(cfg.train.logdir, attempt)
    # later checkpoints: abandoned by a resume from an older one, or all unusable (a start over): left in
    # place, keep-last-K would count them and delete this run's new ones
    if writes and (ckpt or resume) and (moved := checkpoint.set_aside_after(cfg.train.logdir, start_epoch)):
        print(f"note: this run {'resumes' if ckpt else 'starts over'} at epoch {start_epoch}: {len(moved)} "
              f"checkpoint(s) of later epochs moved to {moved[0].parent}", file=sys.stderr)
    logger = RunLogger(cfg.train.logdir, writes, start_time=ckpt.get("start_time") if ckpt else None,
                       started=launched, purge_step=purge)
    if writes:
        (Path(cfg.train.logdir) / "config.yaml").write_text(dump(cfg))
        meta = run_metadata(cfg, info)
        if not ckpt or logger.new_events:  # a run resumed into a new logdir: its events there need it too
            logger.metadata(meta)
        logger.launch({k: meta[k] for k in ("command", "torch")}, state.step)
    ctx = loop.RunContext(dist=info, logger=logger, num_train=train_loader.num_images,
                          precision=cfg.train.precision, seed=cfg.train.seed,
                          short_epoch_steps=cfg.train.short_epoch_steps if cfg.train.short_epoch else 0,
                          max_epochs=cfg.train.max_epochs, nonfinite=cfg.train.nonfinite,
                          print_freq=cfg.train.print_freq, profile=cfg.train.profile,
                          profile_sync=cfg.train.profile_sync,
                          report_first_steps=cfg.train.compile and info.device.type == "cuda")
    try:
        if cfg.train.evaluate:
            _, val = loaders.for_epoch(max(start_epoch - 1, 0))
            res = loop.evaluate(model, val, info.device, cfg.train.precision)
            if info.is_main:
                print(json.dumps({"epoch": start_epoch, "top1": res.top1, "top5": res.top5,
                                  "loss": res.loss, "images": res.count}))
            return 0
        ckpt = checkpoint.Checkpointer(
            cfg.train.logdir, cfg.train.keep_checkpoints, cfg.train.checkpoint_every,
            cfg.train.checkpoint_min_interval_s,
            on_written=lambda epoch, step, seconds: logger.scalar("times/checkpoint_sec", seconds, step))
        # a child forked while the writer thread is inside torch.save inherits that thread's locks held
        # (a loader worker was once seen hung in CPython's after-fork cleanup): a new phase's loaders wait
        loaders.before_build = ckpt.wait
        stop = checkpoint.StopGuard()
        trace = TraceWindow(cfg.train.profile_trace if info.is_main else "", info.device)
        trace_step = trace.hook  # looked up once, not per step

        def after_step(s: loop.TrainState, i: int) -> None:
            if trace_step is not None:
                trace_step(s, i)
            stop.check()
            if fault is not None:  # the fault drill runs after any other per-step hook
                fault(s.epoch, i)

        hooks = loop.Hooks(
            loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
            after_step=after_step,
            after_epoch=lambda s: _save(s, cfg, info, logger, ckpt, stop),
            background=lambda: {"checkpoint write": ckpt.take_write_s()},
        )
        with stop, trace:
            try:
                loop.run(state, loaders, hooks, ctx)
            except checkpoint.Preempted:
                pass
            finally:
                stop.quiet()  # from here a signal cuts nothing short: the last write completes
                t0 = time.perf_counter()
                ckpt.wait()  # whatever ended the run, the write in flight finishes before the exit
            ckpt.save_latest()  # the last epoch is always saved; after a stop signal the last finished one
            if ctx.profile:
                logger.progress(f"profile: at exit, checkpoint wait {time.perf_counter() - t0:.3f} s, "
                                f"checkpoint write {ckpt.take_write_s():.3f} s (in the background)")
        if stop.received is not None:
            if info.is_main:
                saved = f"after epoch {ckpt.last_written}" if ckpt.last_written is not None else "none written"
                print(f"stopped by {stop.received.name}; last checkpoint this process wrote: {saved}",
                      file=sys.stderr, flush=True)
            return 128 + stop.received
        return 0
    finally:
        loaders.close()
        logger.close()


def _save(state: loop.TrainState, cfg: Config, info: dist.DistInfo, logger: RunLogger,
          ckpt: checkpoint.Checkpointer, stop: checkpoint.StopGuard) -> None:
    """Rank 0 hands the state to the checkpointer (a host copy; a write when due); no rank waits for
    the write. Non-finite weights are never saved, so the last checkpoint on disk is always a good one.
    A stop signal (SIGTERM, SIGINT) meanwhile waits for the copy, so it can save this epoch."""
    weights = [t for t in state.raw_model.state_dict().values() if t.is_floating_point()]
    if weights and not bool(torch.stack([torch.isfinite(t).all() for t in weights]).all()):
        raise loop.NonFiniteLoss(f"weights became non-finite in epoch {state.epoch - 1}; not checkpointed")
    if not info.is_main:
        return
    with stop.holding():
        ckpt.epoch_done(state.epoch, {
            "model": state.raw_model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "epoch": state.epoch, "step": state.step,
            "config": to_dict(cfg) | {"phases": list(state.schedule.raw)},
            "arch": cfg.model.arch, "start_time": logger.start_time, "world_size": info.world_size,
        })
