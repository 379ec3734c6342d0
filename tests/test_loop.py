"""The shared training loop: the first step of each training shape timed once; random numbers per rank."""
from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn as nn

from training import loop
from training.dist import DistInfo
from training.logs import RunLogger
from training.phases import parse_schedule

from test_bench import Batches  # fixed CPU batches of 6 features
from test_bench import Source as ThreeBatches  # 3 training batches of 4 images each epoch


class SlowFirstCall(nn.Linear):
    """Sleeps on the first call of each input shape, as a compiled model compiles."""

    def __init__(self):
        super().__init__(6, 3)
        self.seen: set = set()

    def forward(self, x):
        if x.shape not in self.seen:
            self.seen.add(x.shape)
            time.sleep(0.3)
        return super().forward(x)


def run(tmp_path, report: bool, **ctx_args) -> None:
    # epochs 0-1 at batch 4, epoch 2 at batch 2: two training shapes
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": 2, "sz": 8, "bs": 2}, {"ep": [0, 3], "lr": 0.1}])
    loaders = {4: (Batches(3, 4), Batches(1, 4)), 2: (Batches(6, 2), Batches(1, 2))}

    class Source:
        def for_epoch(self, epoch):
            return loaders[schedule.data_phase(epoch).batch_size]

    model = SlowFirstCall()
    state = loop.TrainState(model, model, torch.optim.SGD(model.parameters(), lr=0.1), None, schedule)
    logger = RunLogger(tmp_path / f"run{report}", True)
    ctx = loop.RunContext(dist=DistInfo(0, 1, 0, torch.device("cpu")), logger=logger, num_train=12,
                          report_first_steps=report, **ctx_args)
    loop.run(state, Source(), loop.Hooks(loss_fn=nn.CrossEntropyLoss()), ctx)
    logger.close()


def test_first_step_of_each_shape_is_timed_once(tmp_path, capsys):
    run(tmp_path, True)
    lines = re.findall(r"first step of shape (\S+): ([0-9.]+) s", capsys.readouterr().err)
    assert [shape for shape, _ in lines] == ["4x6", "2x6"]  # once each, in order, not per epoch
    assert all(0.3 <= float(seconds) < 5 for _, seconds in lines)  # the slow first call is inside


def test_no_first_step_report_unless_asked(tmp_path, capsys):
    run(tmp_path, False)
    assert "first step of shape" not in capsys.readouterr().err


def trained_weight(tmp_path, rank: int) -> torch.Tensor:
    """One epoch of a dropout model on rank ``rank`` of 2 (no process group: the same batches and
    initial weights on both ranks, so only the random numbers drawn can differ)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 1], "lr": 0.1}])
    state = loop.TrainState(model, model, torch.optim.SGD(model.parameters(), lr=0.1), None, schedule)
    loaders = (Batches(3, 4), Batches(1, 4))

    class Source:
        def for_epoch(self, epoch):
            return loaders

    logger = RunLogger(tmp_path / f"rank{rank}", False)
    ctx = loop.RunContext(dist=DistInfo(rank, 2, rank, torch.device("cpu")), logger=logger, num_train=24)
    loop.run(state, Source(), loop.Hooks(loss_fn=nn.CrossEntropyLoss()), ctx)
    return model[1].weight.detach().clone()


def test_each_rank_draws_its_own_dropout_masks_and_draws_them_again_on_a_rerun(tmp_path):
    assert torch.equal(trained_weight(tmp_path, 1), trained_weight(tmp_path, 1))  # a resume redraws them
    assert not torch.equal(trained_weight(tmp_path, 0), trained_weight(tmp_path, 1))


def test_an_unsynced_profile_lets_the_host_run_ahead(tmp_path, capsys, monkeypatch):
    """train.profile_sync=false (bench pipeline --end-to-end): no device sync at the stage boundaries, so
    the host overlaps its loader work with the device's as in training; the synced profile syncs at each."""
    syncs = []
    monkeypatch.setattr(loop, "_sync", lambda device: syncs.append(device))
    run(tmp_path / "unsynced", False, profile=True, profile_sync=False)
    err = capsys.readouterr().err
    assert syncs == [] and err.count("stage        seconds   share  (host times, train.profile_sync=false)") == 3
    run(tmp_path / "synced", False, profile=True)
    err = capsys.readouterr().err
    assert "(host times" not in err and "logging" in err
    assert len(syncs) >= 4 * 12  # data wait, forward, backward, optimizer of each of the 12 steps


def test_eta_counts_the_steps_the_drop_last_loader_yields():
    """airbench94's schedule (bs 1024, 9.9 epochs of 50,000 images): the cifar loader drops the
    partial batch, so 9 * 48 + ceil(0.9 * 48) = 476 steps of 1024 are left at the start, not the 486
    of 49-step epochs; a loader keeping it (imagenet's) runs 9 whole epochs of 50,000 images (the
    49th batch holds 848) and 45 of the last epoch's 49 batches (the 9.9th epoch ends mid-epoch)."""
    schedule = parse_schedule([{"ep": 0, "sz": 32, "bs": 1024}, {"ep": [0, 9.9], "lr": 0.1}], step_start=True)
    state = loop.TrainState(nn.Linear(1, 1), nn.Linear(1, 1), None, None, schedule)
    for drop_last, start, after_40, after_all in ((True, 476 * 1024, (8 + 44) * 1024, 44 * 1024),
                                                  (False, 9 * 50_000 + 45 * 1024, 50_000 - 40 * 1024 + 45 * 1024,
                                                   45 * 1024)):
        ctx = loop.RunContext(dist=DistInfo(0, 1, 0, torch.device("cpu")), logger=None, num_train=50_000,
                              drop_last=drop_last)
        assert loop._images_left(state, ctx, 0, 0) == start
        assert loop._images_left(state, ctx, 8, 40) == after_40  # epoch 8, 40 steps done
        assert loop._images_left(state, ctx, 8, 48 if drop_last else 49) == after_all  # its last step done


def test_eta_ends_where_max_epochs_stops_the_invocation():
    """--max-epochs 2 from epoch 3 of a 10-epoch schedule: the ETA counts epochs 3 and 4 only, the
    second at its own phase's batch; across 2 ranks each takes ceil(1001 / 2) = 501 images an epoch,
    all but the last at batch 100 (a batch of one, left out)."""
    schedule = parse_schedule([{"ep": 0, "sz": 32, "bs": 100}, {"ep": 4, "sz": 32, "bs": 200},
                               {"ep": [0, 10], "lr": 0.1}])
    state = loop.TrainState(nn.Linear(1, 1), nn.Linear(1, 1), None, None, schedule)
    ctx = loop.RunContext(dist=DistInfo(0, 2, 0, torch.device("cpu")), logger=None, num_train=1001)
    assert loop._images_left(state, ctx, 3, 2, stop=5) == ((500 - 200) + 501) * 2
    assert loop._images_left(state, ctx, 3, 2) == ((500 - 200) + 6 * 501) * 2
    assert loop._images_left(state, ctx, 3, 2, stop=20) == ((500 - 200) + 6 * 501) * 2


def test_the_progress_line_eta_counts_to_max_epochs(tmp_path, monkeypatch):
    """loop.run hands its --max-epochs end to the ETA: after epoch 0's last step of a 3-epoch run
    stopped after 1 epoch, nothing is left (24 images would be, to the schedule's end)."""
    lefts = []
    images_left = loop._images_left
    monkeypatch.setattr(loop, "_images_left", lambda *a, **k: lefts.append(images_left(*a, **k)) or lefts[-1])
    run(tmp_path / "stopped", False, max_epochs=1, print_freq=1)
    assert lefts == [8, 4, 0]
    lefts.clear()
    run(tmp_path / "whole", False, print_freq=1)
    assert lefts[:3] == [32, 28, 24]


class Progress:
    """A RunLogger's progress lines; its scalars are dropped."""

    def __init__(self):
        self.lines: list[str] = []

    def scalar(self, *args) -> None:
        pass

    def progress(self, text: str) -> None:
        self.lines.append(text)


def test_the_eta_is_all_ranks_images_over_all_ranks_speed():
    """2 ranks, ceil(1000 / 2) = 500 images each at batch 100: after the first step 2 x 400 = 800 images
    are left, and at 100 img/s on each rank (200 together) that is 4 s."""
    schedule = parse_schedule([{"ep": 0, "sz": 32, "bs": 100}, {"ep": [0, 1], "lr": 0.1}])
    state = loop.TrainState(nn.Linear(6, 3), nn.Linear(6, 3), None, None, schedule)
    log = Progress()
    ctx = loop.RunContext(dist=DistInfo(0, 2, 0, torch.device("cpu")), logger=log, num_train=1000)
    logits, labels = torch.zeros(100, 3), torch.zeros(100, dtype=torch.long)
    loop._log_train(state, ctx, logits, labels, 1.0, 0.1, 100.0, 0, 0, 5, None)
    assert log.lines == ["epoch 0 [1/5] loss 1.0000 lr 0.1 100 img/s/rank  ETA 00:00:04"]


def test_evaluate_known_answers_down_to_a_single_image():
    """Logits [2, 1, 0] for every image: label 0 is a top-1 hit, label 2 a top-5 hit only (3 classes);
    the loss is the mean cross-entropy, log(e^2 + e + 1) minus the label's logit. One image counts as
    one."""
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([2.0, 1.0, 0.0]).expand(len(x), 3)

    model = Fixed()
    lse = torch.logsumexp(torch.tensor([2.0, 1.0, 0.0]), 0).item()
    images = torch.zeros(4, 6)
    res = loop.evaluate(model, [(images[:3], torch.tensor([0, 0, 2])), (images[:1], torch.tensor([0]))],
                        torch.device("cpu"))
    assert (res.top1, res.top5, res.count) == (75.0, 100.0, 4)
    assert res.loss == pytest.approx(lse - 2 + 2 / 4)
    one = loop.evaluate(model, [(images[:1], torch.tensor([2]))], torch.device("cpu"))
    assert (one.top1, one.top5, one.count) == (0.0, 100.0, 1) and one.loss == pytest.approx(lse)


class Evals(Progress):
    """A RunLogger's evaluations (epoch, step), train.log lines and progress lines."""

    def __init__(self):
        super().__init__()
        self.evals: list[tuple[int, int]] = []
        self.humans: list[str] = []

    def human(self, text: str) -> None:
        self.humans.append(text)

    def log_eval(self, epoch: int, top1: float, top5: float, seconds: float, step: int) -> None:
        self.evals.append((epoch, step))


def run_with(schedule, source, hooks: loop.Hooks, **ctx_args):
    """loop.run of a Linear(6, 3) on the CPU: its result, the state and what was logged."""
    model = nn.Linear(6, 3)
    state = loop.TrainState(model, model, torch.optim.SGD(model.parameters(), lr=0.1), None, schedule)
    log = Evals()
    ctx = loop.RunContext(dist=DistInfo(0, 1, 0, torch.device("cpu")), logger=log, num_train=12, **ctx_args)
    return loop.run(state, source, hooks, ctx), state, log


def no_eval(model, val) -> loop.EvalResult:
    return loop.EvalResult(0.0, 0.0, 0.0, 4, 0.0)


def test_eval_every_k_epochs_and_always_after_the_last():
    """eval_every=2 over 5 epochs of 3 steps of 4 images: evaluated after the 2nd, 4th and (the run's
    end) 5th epoch, logged as epochs 1, 3 and 4 at 24, 48 and 60 images; the last one is returned."""
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 5], "lr": 0.1}])
    calls = []

    def evaluate(model, val):
        calls.append(val)
        return loop.EvalResult(float(len(calls)), 0.0, 0.0, 4, 0.0)

    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss(), evaluate=evaluate, eval_every=2)
    last, _, log = run_with(schedule, ThreeBatches(), hooks)
    assert log.evals == [(1, 24), (3, 48), (4, 60)] and last.top1 == 3.0


def test_a_summed_loss_is_logged_as_the_batch_mean():
    """loss_is_sum (the cifar recipe's fixed loss scale): a batch of 4 at zero logits over 3 classes sums
    4 log 3 and is logged as log 3 = 1.0986 an image, as a mean loss is."""
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 1], "lr": 0.0}])  # the logits stay 0
    model = nn.Linear(6, 3)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
    state = loop.TrainState(model, model, torch.optim.SGD(model.parameters(), lr=0.1), None, schedule)
    log = Progress()
    ctx = loop.RunContext(dist=DistInfo(0, 1, 0, torch.device("cpu")), logger=log, num_train=12, print_freq=1)
    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss(reduction="sum"), loss_is_sum=True)
    loop.train_epoch(state, Batches(3, 4), hooks, ctx, epoch=0)
    assert [line.split(" lr ")[0] for line in log.lines] == [f"epoch 0 [{i}/3] loss 1.0986" for i in (1, 2, 3)]


def test_after_step_gets_each_steps_index_in_its_epoch():
    """The cifar recipe's hooks (lookahead's epoch-end copy, the whitening-bias freeze) take i + 1 == steps
    as an epoch's last step: the hook gets 0-based indices, 0, 1, 2 for 3 steps, each epoch anew."""
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 2], "lr": 0.1}])
    seen = []
    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss(), evaluate=no_eval,
                       after_step=lambda s, i: seen.append((s.epoch, i)))
    run_with(schedule, ThreeBatches(), hooks)
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_short_epoch_steps_cap_each_epoch():
    """train.short_epoch (smoke tests): each epoch runs short_epoch_steps steps, 2 of the loader's 3
    batches of 4, and says so: 2 epochs train 16 images, not 24."""
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": [0, 2], "lr": 0.1}])
    hooks = loop.Hooks(loss_fn=nn.CrossEntropyLoss(), evaluate=no_eval)
    _, state, log = run_with(schedule, ThreeBatches(), hooks, short_epoch_steps=2, print_freq=1)
    assert [line.split(" loss ")[0] for line in log.lines] == ["epoch 0 [1/2]", "epoch 0 [2/2]",
                                                               "epoch 1 [1/2]", "epoch 1 [2/2]"]
    assert state.step == 16


def test_each_data_phase_is_said_once_when_it_starts():
    """train.log names a data phase at its first epoch only: epochs 0-1 at batch 4, epoch 2 at batch 2."""
    schedule = parse_schedule([{"ep": 0, "sz": 8, "bs": 4}, {"ep": 2, "sz": 8, "bs": 2}, {"ep": [0, 3], "lr": 0.1}])
    loaders = {4: (Batches(3, 4), Batches(1, 4)), 2: (Batches(6, 2), Batches(1, 2))}

    class ByBatch:
        def for_epoch(self, epoch):
            return loaders[schedule.data_phase(epoch).batch_size]

    _, _, log = run_with(schedule, ByBatch(), loop.Hooks(loss_fn=nn.CrossEntropyLoss(), evaluate=no_eval))
    assert log.humans == ["phase at epoch 0: size 8 batch 4 val_batch 4",
                          "phase at epoch 2: size 8 batch 2 val_batch 2"]
