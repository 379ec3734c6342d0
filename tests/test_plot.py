"""Plots: accuracy curves of runs (CLI) and the phase-schedule figure; both must be valid PNGs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import FIXTURE_EVENTS, REPO
from dawn.events import EventsError
from dawn.plot import plot_runs, plot_schedule
from procs import run_bounded
from training.phases import parse_schedule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    h, w, channels = imread(path).shape
    assert h > 100 and w > 100 and channels in (3, 4)


def small_run(logdir: Path, top5s: list[float]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    w.add_scalar("first", 0.0, 0, walltime=1000.0)
    for i, top5 in enumerate(top5s):
        wall = 1000.0 + 600 * (i + 1)
        for tag, v in (("losses/test_1", top5 - 20), ("losses/test_5", top5), ("times/eval_sec", 5.0)):
            w.add_scalar(tag, v, 100 * (i + 1), walltime=wall)
    w.close()
    return logdir


def test_curves_cli_several_runs(tmp_path):
    run = small_run(tmp_path / "cpu-run", [40.0, 80.0, 94.0])
    out = tmp_path / "curves.png"
    r = run_bounded([sys.executable, "dawn/plot.py", str(FIXTURE_EVENTS), str(run), "--out", str(out),
                     "--target-top5", "93"], cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_png(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-run", "curves.png"]  # no temp file left


@pytest.mark.parametrize("name, problem", [
    ("curves.tsv", "Format 'tsv' is not supported (supported formats: "),  # was a traceback, exit 1
    ("curves", "no suffix naming the format (supported formats: "),  # was curves.png, exit 0
    ("no/such/curves.png", "no such directory {parent}"),
])
def test_curves_bad_out_is_one_line_before_any_work(tmp_path, name, problem):
    out = tmp_path / name
    problem = problem.format(parent=out.parent)
    # RUN does not exist either: --out is refused first, before any run is read
    r = run_bounded([sys.executable, "dawn/plot.py", str(tmp_path / "missing"), "--out", str(out)],
                    cwd=REPO, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"plot.py: error: argument --out: {out}: {problem}")
    if "formats" in problem:
        assert {"pdf", "png", "svg"} <= set(line[line.rindex(": ") + 2:-1].split(", "))
    assert list(tmp_path.iterdir()) == []


def test_a_figure_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def half_written(self, fname, **kw):  # a writer that dies after its first bytes (a full disk)
        if isinstance(fname, (str, Path)):
            Path(fname).write_bytes(PNG_SIGNATURE)
        else:
            fname.write(PNG_SIGNATURE)
        raise OSError(28, "No space left on device")

    out = tmp_path / "c.png"
    out.write_bytes(b"the previous figure")
    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="No space left on device"):
        plot_runs([FIXTURE_EVENTS], out)
    assert out.read_bytes() == b"the previous figure"
    assert list(tmp_path.iterdir()) == [out]
    # the command line says it in one line, exit 2, as for any other input it cannot use
    from dawn import plot
    assert plot.main([str(FIXTURE_EVENTS), "--out", str(out)]) == 2
    assert "error: [Errno 28] No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous figure"


def test_curves_cli_error_is_one_line(tmp_path):
    r = run_bounded([sys.executable, "dawn/plot.py", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")],
                    cwd=REPO, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "no such file or directory" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--target-top5", "120"], "argument --target-top5: '120' is not a percentage in (0, 100]"),
    (["--target-top5", "nan"], "argument --target-top5: 'nan' is not a percentage in (0, 100]"),
    (["--out", ""], "argument --out: empty path"),
    ([], "the following arguments are required: --out"),
])
def test_curves_bad_flags_are_one_line_exit_2(tmp_path, args, message):
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in args and args else []
    r = run_bounded([sys.executable, "dawn/plot.py", str(FIXTURE_EVENTS), *args, *out], cwd=REPO, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line == f"plot.py: error: {message}"
    assert not (tmp_path / "x.png").exists()


def test_plot_runs_in_process(tmp_path):
    run = small_run(tmp_path / "never", [40.0, 60.0])
    out = plot_runs([run], tmp_path / "c.png", target_top5=93, ignore_eval=True)
    assert_png(out)
    assert plot_runs([run], tmp_path / "c.svg").read_bytes().startswith(b"<?xml")  # as the suffix says
    with pytest.raises(EventsError):
        plot_runs([tmp_path], tmp_path / "d.png")


@pytest.mark.parametrize("phases, world", [
    ((FIXTURE_EVENTS / "phases.txt").read_text(), 64),
    # a fractional last epoch, epoch-stepped lr, a tiny dataset (fewer steps than sample points)
    ([{"ep": 0, "sz": 32, "bs": 8}, {"ep": [0, 2], "lr": [0.1, 0.4], "epoch_step": True},
      {"ep": 2, "sz": 48, "bs": 4, "min_scale": 0.35}, {"ep": [2, 3.5], "lr": [0.4, 0.0]}], 1),
])
def test_plot_schedule(tmp_path, phases, world):
    out = plot_schedule(parse_schedule(phases), tmp_path / "schedule.png", num_images=1000 if world == 1
                        else 1_281_167, world_size=world)
    assert out == tmp_path / "schedule.png"
    assert_png(out)


def test_plotted_lr_is_the_cifar_runs():
    """A cifar schedule (its loader drops a partial batch, airbench's lr arithmetic): the plotted last
    step is the run's 476th, at 9 + 43/48 epochs, with the lr the loop gives it."""
    from dawn.plot import lr_points
    from training.config import load_yaml
    schedule = parse_schedule(load_yaml(str(REPO / "configs" / "cifar10.yaml"))["phases"], step_start=True)
    plan = schedule.plan(50_000, 1, True)
    xs, ys = lr_points(schedule, plan, 50_000, 1, True)
    assert sum(row.iters for row in plan) == 476 and xs[-1] == 9 + 43 / 48
    assert ys[0] == pytest.approx(0.2) and ys[-1] == schedule.lr(9, 43, 48)


def test_plotted_lr_ends_each_epoch_on_its_last_step():
    """5005 steps an epoch (imagenet at batch 256) are sampled every 25th, which misses step 5004: each
    epoch's line still ends on it, with the lr the loop sets there (1.0 -> 0.1 over two epochs: 0.55,
    then the schedule's last lr, 0.1)."""
    from dawn.plot import lr_points
    schedule = parse_schedule([{"ep": 0, "sz": 128, "bs": 256}, {"ep": [0, 2], "lr": [1.0, 0.1]}])
    xs, ys = lr_points(schedule, schedule.plan(1_281_167, 1, False), 1_281_167, 1, False)
    ends = [max((x, y) for x, y in zip(xs, ys) if epoch <= x < epoch + 1) for epoch in (0, 1)]
    assert [x for x, _ in ends] == [5004 / 5005, 1 + 5004 / 5005]
    assert [y for _, y in ends] == pytest.approx([0.55, 0.1], abs=1e-12)


def test_schedule_size_and_batch_panels_change_at_the_phases_first_epoch(tmp_path, monkeypatch):
    """The size and batch panels are steps that hold each epoch's value until the next epoch: the
    epoch-2 phase (224 px, batch 4) is drawn from epoch 2 on, not over epoch 1."""
    import dawn.plot as plot
    figs = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: figs.append(fig))
    schedule = parse_schedule([{"ep": 0, "sz": 128, "bs": 8}, {"ep": 2, "sz": 224, "bs": 4},
                               {"ep": [0, 4], "lr": 0.1}])
    plot_schedule(schedule, tmp_path / "s.png", num_images=64)

    def drawn_at(line, x: float) -> float:
        v = line.get_path().vertices  # as drawn: the step style applied
        return next(y0 for (x0, y0), (x1, y1) in zip(v, v[1:]) if y0 == y1 and x0 <= x < x1)

    _, ax_sz, ax_bs = figs[0].axes
    assert [drawn_at(ax_sz.lines[0], e + 0.5) for e in range(4)] == [128, 128, 224, 224]
    assert [drawn_at(ax_bs.lines[0], e + 0.5) for e in range(4)] == [8, 8, 4, 4]


def test_train_cli_plot_schedule(tmp_path):
    out = tmp_path / "s.png"
    r = run_bounded([sys.executable, "training/train.py", "--config", "configs/imagenet18/8x8.yaml",
                     "--plot-schedule", str(out), "--world-size", "64"], cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_png(out)


def test_curves_plot_top5_solid_top1_dashed_and_mark_the_first_hit(tmp_path, monkeypatch):
    """The figure's data are the exporter's rows: top-5 solid, top-1 dashed against hours, the marker at
    the first row reaching the target (its hours, its top-5), and --ignore-eval named on the x axis."""
    import dawn.plot as plot
    from dawn.events import load_run
    from dawn.prepare_dawn_tsv import eval_rows, first_reaching
    figs = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: figs.append(fig))
    plot_runs([FIXTURE_EVENTS], tmp_path / "c.png", target_top5=90.0, ignore_eval=True)
    rows = eval_rows(load_run(FIXTURE_EVENTS), ignore_eval=True)
    hit = first_reaching(rows, 90.0)
    assert hit is not None and hit is not rows[-1]
    ax = figs[0].axes[0]
    top5, top1, marker = ax.lines[:3]
    assert list(top5.get_xdata()) == [r.hours for r in rows] and top5.get_linestyle() == "-"
    assert list(top5.get_ydata()) == [r.top5 for r in rows]
    assert list(top1.get_ydata()) == [r.top1 for r in rows] and top1.get_linestyle() == "--"
    assert (list(marker.get_xdata()), list(marker.get_ydata())) == ([hit.hours], [hit.top5])
    assert ax.get_xlabel() == "hours (evaluation time excluded)"
