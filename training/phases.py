"""The phase-schedule DSL of fast.ai/DIUx imagenet18, parsed safely into an immutable Schedule.

A schedule is a list of dicts. Dicts with ``bs`` are data phases (image size, batch size, data
dirs, crop scale, rectangular validation); dicts with ``lr`` are learning-rate phases; a dict may be
both. Input may be the imagenet18 Python-literal string, JSON, YAML, or an already-parsed list. It is
parsed with ``ast.literal_eval`` / ``yaml.safe_load`` within bounds (training/bounded.py), never
evaluated; a schedule is at most MAX_PHASES phases and MAX_EPOCHS epochs.

Pure Python on purpose (no torch import): a user can inspect a schedule before paying for GPUs, and
every function here is a pure function of (epoch, iteration).
"""
from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from training import bounded

KEYS = ("ep", "sz", "bs", "lr", "trndir", "valdir", "min_scale", "rect_val", "keep_dl", "epoch_step")
DEFAULT_MIN_SCALE = 0.08  # imagenet18's RandomResizedCrop lower area bound
# Bounds on what a run can mean (imagenet18 trains ~35 epochs in 8 phases at <= 288 px): beyond
# them a schedule is a typo or generated input, and planning it would never finish.
MAX_EPOCHS = 1000
MAX_PHASES = 100
MAX_SIZE = 4096  # px
MAX_BATCH = 65536  # per process
MAX_CHARS = 65536  # --phases text or file; imagenet18's 8x8 schedule is ~700


class PhaseError(ValueError):
    """A schedule that cannot be run; the message is one line naming the phase and key."""


def rank_train_images(num_images: int, world_size: int, batch_size: int) -> int:
    """Images each process trains in a whole epoch: its share of DistributedSampler's order, ceil(N /
    world), less the last one where it would be a batch of its own. BatchNorm cannot train on one
    image where a layer's output is 1 x 1 px (ResNet at 32 px stopped with a traceback after the
    epoch's last step), and one image's statistics would be the running estimate's noise anyway."""
    per_rank = math.ceil(num_images / world_size)
    return per_rank - 1 if per_rank > 1 and per_rank % batch_size == 1 else per_rank


@dataclass(frozen=True)
class DataPhase:
    start: int  # first epoch of this phase
    size: int  # training image side, px
    batch_size: int  # per-process batch size
    train_dir: str  # suffix appended to DATA, e.g. '-sz/160' (then '/train')
    val_dir: str  # suffix appended to DATA (then '/validation'); defaults to train_dir
    min_scale: float  # lower bound of the random-resized-crop area fraction
    rect_val: bool  # rectangular (aspect-ratio-batched) validation
    keep_dl: bool  # this phase only changed the batch size of the previous one


@dataclass(frozen=True)
class LrPhase:
    start: float  # epoch
    end: float | None  # epoch; None for a constant phase (holds until the next phase)
    lr_start: float
    lr_end: float | None  # None for a constant phase
    epoch_step: bool  # linear ramp stepped once per epoch instead of per iteration


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch of a run does, as printed by ``train.py --dry-run``."""

    epoch: int
    size: int
    batch_size: int
    val_batch_size: int  # per process; from the phase that built the loaders (keep_dl keeps them)
    iters: int
    lr_first: float
    lr_last: float
    min_scale: float
    rect_val: bool
    train_dir: str
    val_dir: str


@dataclass(frozen=True)
class Schedule:
    data_phases: tuple[DataPhase, ...]
    lr_phases: tuple[LrPhase, ...]
    raw: tuple[dict, ...]  # the validated input dicts (tuples as lists), saved with checkpoints
    # False: imagenet18's lr (iteration i gets the ramp's value after i + 1 steps); True: airbench's
    # (LambdaLR: step s of the run gets the value at s, so a ramp to 0 ends on its last step, not at 0)
    step_start: bool = False

    @property
    def total_epochs(self) -> float:
        """Where training stops, in epochs (may be fractional): the largest lr phase bound."""
        return max(max(p.start, p.end or 0.0) for p in self.lr_phases)

    @property
    def num_epochs(self) -> int:
        """Epochs the loop runs; the last one is partial when total_epochs is fractional."""
        return math.ceil(self.total_epochs)

    def data_phase(self, epoch: int) -> DataPhase:
        return _last_started(self.data_phases, epoch)

    def data_phase_index(self, epoch: int) -> int:
        return self.data_phases.index(self.data_phase(epoch))

    def lr(self, epoch: int, iteration: int, iters_per_epoch: int) -> float:
        """lr for 0-based ``iteration`` of ``epoch`` (imagenet18's Scheduler: batch_num = iteration+1;
        with ``step_start``, airbench's: the ramps' value at the step's start)."""
        if self.step_start:
            return lr_at_step_start(self.lr_phases, epoch, iteration, iters_per_epoch)
        return lr_at(self.lr_phases, epoch, iteration + 1, iters_per_epoch)

    def batches_per_epoch(self, epoch: int, num_images: int, world_size: int = 1, drop_last: bool = False) -> int:
        """Batches a loader yields per process in a whole ``epoch``: ceil(rank_train_images / bs), as
        DistributedSampler + DataLoader give; floor instead when the loader drops a partial batch."""
        bs = self.data_phase(epoch).batch_size
        per_rank = rank_train_images(num_images, world_size, bs)
        return per_rank // bs if drop_last else math.ceil(per_rank / bs)

    def iters_per_epoch(self, epoch: int, num_images: int, world_size: int = 1, drop_last: bool = False) -> int:
        """Steps in ``epoch``: ``share_of_epoch`` of the batches the loader yields (``batches_per_epoch``)."""
        return self.share_of_epoch(epoch, self.batches_per_epoch(epoch, num_images, world_size, drop_last))

    def share_of_epoch(self, epoch: int, batches: int) -> int:
        """Steps in ``epoch`` of a loader yielding ``batches``: all of them; a fractional final epoch
        runs its share, rounded up (airbench94: 9.9 epochs of 48 batches, ceil(475.2) = 476 steps)."""
        remaining = self.total_epochs - epoch
        return batches if remaining >= 1 else max(1, math.ceil(remaining * batches))

    def batch_shapes(self, num_images: int | Callable[[int], int], world_size: int = 1) -> list[tuple[int, int]]:
        """Distinct (per-rank batch, image size) pairs of the training batches, in order of first
        use: each phase's full batch and the partial last batch of an epoch that runs to its end
        (rank_train_images mod bs). A model compiled with static shapes needs one graph per pair.
        ``num_images``: the count, or the count of an epoch's data copy (a phase reading another copy,
        ``-sz/352``, holding other images, has its own partial batch)."""
        count = num_images if callable(num_images) else lambda epoch: num_images
        plans = {count(0): self.plan(count(0), world_size)}  # one plan per distinct count
        shapes: dict[tuple[int, int], None] = {}  # an ordered set
        for i in range(len(plans[count(0)])):
            n = count(i)
            row = plans.setdefault(n, self.plan(n, world_size))[i]
            shapes.update(dict.fromkeys(self.epoch_shapes(row, n, world_size)))
        return list(shapes)

    def epoch_shapes(self, row: EpochPlan, num_images: int, world_size: int = 1) -> list[tuple[int, int]]:
        """(per-rank batch, image size) of the batches of the epoch ``row`` plans: its full batch and,
        when it runs to its end, the partial last one (rank_train_images mod bs)."""
        per_rank = rank_train_images(num_images, world_size, row.batch_size)
        shapes = [(min(row.batch_size, per_rank), row.size)]
        full = self.batches_per_epoch(row.epoch, num_images, world_size)
        last = per_rank - (full - 1) * row.batch_size
        if row.iters == full and (last, row.size) != shapes[0]:
            shapes.append((last, row.size))
        return shapes

    def plan(self, num_images: int, world_size: int = 1, drop_last: bool = False,
             val_batch: int = 0) -> list[EpochPlan]:
        """Per epoch: data phase, steps and the lr of its first and last step. ``drop_last``: the loader
        drops a partial last batch (the CIFAR recipe's), so an epoch has floor(N / bs) steps at most.
        ``val_batch``: the validation batch, or 0 for imagenet18's rule (``val_batch_size``)."""
        rows = []
        for epoch in range(self.num_epochs):
            ph = self.data_phase(epoch)
            full = self.batches_per_epoch(epoch, num_images, world_size, drop_last)
            if not full:
                raise PhaseError(f"epoch {epoch}: batch size {ph.batch_size} is more than the "
                                 f"{math.ceil(num_images / world_size)} images per process, and a partial batch "
                                 "is dropped: no step would run")
            iters = self.share_of_epoch(epoch, full)
            built = loader_phase(self.data_phases, epoch)
            rows.append(EpochPlan(
                epoch=epoch, size=ph.size, batch_size=ph.batch_size,
                val_batch_size=val_batch_size(built.size, built.batch_size, val_batch), iters=iters,
                lr_first=self.lr(epoch, 0, full), lr_last=self.lr(epoch, iters - 1, full),
                min_scale=ph.min_scale, rect_val=ph.rect_val,
                train_dir=ph.train_dir, val_dir=ph.val_dir))
        return rows


def loader_phase(data_phases: Sequence[DataPhase], epoch: int) -> DataPhase:
    """The data phase whose loaders serve ``epoch``: the last one started without keep_dl (a
    keep_dl phase keeps the loaders built before it and changes only the training batch)."""
    return [p for p in data_phases if p.start <= epoch and not p.keep_dl][-1]


def val_batch_size(size: int, batch_size: int, override: int = 0) -> int:
    """The per-rank validation batch for a data phase of image ``size`` and training ``batch_size``:
    ``override`` (data.val_batch_size) when set, else imagenet18's rule, larger batches where the
    images are small, which also evaluates faster (train_imagenet_nv.py, DataManager.preload_data)."""
    return override or max(batch_size, {128: 512, 224: 256}.get(size, 128))


def _last_started(phases: Sequence[Any], epoch: float) -> Any:
    current = phases[0]
    for p in phases:
        if p.start <= epoch:
            current = p
    return current


def lr_at(phases: Sequence[LrPhase], epoch: int, batch_num: int, batch_tot: int) -> float:
    """imagenet18's arithmetic, kept operation for operation so values match its logs to the bit."""
    position = epoch + max(batch_num - 1, 0) / batch_tot  # this iteration, in epochs: phases may
    ph = _last_started(phases, position)  # start or end mid-epoch (CIFAR's fractional schedules)
    if ph.end is None:
        return ph.lr_start
    if ph.epoch_step:
        batch_num = 0
    step_tot = (ph.end - ph.start) * batch_tot
    step_curr = (epoch - ph.start) * batch_tot + batch_num
    if step_curr > step_tot:  # past a ramp's end (a gap, or its last partial step): hold the end value
        return ph.lr_end
    step_size = (ph.lr_end - ph.lr_start) / step_tot
    return ph.lr_start + step_curr * step_size


def lr_at_step_start(phases: Sequence[LrPhase], epoch: int, iteration: int, batch_tot: int) -> float:
    """The lr of 0-based ``iteration`` of ``epoch`` as airbench sets it: the phase ramps evaluated at
    the step's start, position = epoch + iteration / batch_tot (airbench94_muon: 1 - s / total for
    step s; airbench94: LambdaLR's f(s)). The first step gets a ramp's start value, and the last
    step of a ramp to 0 a small lr, where ``lr_at`` gives the first step one increment already and
    the last step lr 0 (a step that trains nothing)."""
    position = epoch + iteration / batch_tot
    ph = _last_started(phases, position)
    if ph.end is None:
        return ph.lr_start
    if ph.epoch_step:
        position = float(epoch)
    span = ph.end - ph.start
    if position >= ph.end or span <= 0:  # past the ramp's end (a gap): hold its end value
        return ph.lr_end
    return ph.lr_start + (position - ph.start) / span * (ph.lr_end - ph.lr_start)


# ---------------------------------------------------------------------------------------- parsing

def load_phases(source: str | Sequence[dict]) -> list[dict]:
    """Turn a --phases argument (literal/JSON/YAML text, a file path, or a list) into a list of dicts."""
    if not isinstance(source, str):
        data: Any = source
    else:
        data = _parse_text(_read_source(source))
        if isinstance(data, dict) and "phases" in data:  # a config file holding a phases list
            data = data["phases"]
    if not isinstance(data, (list, tuple)) or not data:
        raise PhaseError("phases: expected a non-empty list of dicts")
    if len(data) > MAX_PHASES:
        raise PhaseError(f"phases: {len(data)} phases; at most {MAX_PHASES} are accepted")
    return [_to_lists(p) for p in data]


_PATH_LIKE = re.compile(r"^[^\s\[\]{}():'\",]*(/|\.[A-Za-z]\w*$)")  # no schedule syntax; a '/' or an extension


def _read_source(source: str) -> str:
    """The schedule text: the file's when ``source`` names one, else ``source`` itself."""
    try:
        if os.path.isfile(source):
            return bounded.read_text(source, MAX_CHARS)
        if os.path.exists(source):
            raise PhaseError(f"phases: {source} is not a file")
    except bounded.LimitError as e:
        raise PhaseError(f"phases file {source}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PhaseError(f"phases file {source}: {getattr(e, 'strerror', None) or e}") from None
    if _PATH_LIKE.match(source.strip()):
        raise PhaseError(f"phases: no such file: {source.strip()}")
    return source


def _parse_text(text: str) -> Any:
    try:
        bounded.check_length(text, MAX_CHARS)
        bounded.check_nesting(text)
    except bounded.LimitError as e:
        raise PhaseError(f"phases: {e}") from None
    code = text.strip()
    try:
        data = ast.literal_eval(code)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        python_error = e if isinstance(e, SyntaxError) else None
    else:
        _refuse_duplicate_keys(code)
        return data
    if python_error is None:  # Python but not a literal: a call or attribute is code, refuse it outright
        try:
            tree = ast.parse(code, mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            tree = None
        code_node = next((n for n in ast.walk(tree) if _is_code(n)), None) if tree is not None else None
        if code_node is not None:
            found = ast.get_source_segment(code, code_node) or ast.unparse(code_node)
            raise PhaseError(f"phases: not a literal (found {found[:60]!r}); "
                             "only literals are accepted and nothing is evaluated")
    try:
        data = bounded.load_yaml(text, MAX_CHARS)
    except (bounded.LimitError, bounded.DuplicateKeyError) as e:  # YAML, but not a schedule
        raise PhaseError(f"phases: {e}") from None
    except bounded.TextError as e:
        # imagenet18's literals start with '[': there Python's position says more than YAML's
        where = _python_where(python_error, code) if python_error and code.startswith("[") else str(e)
        raise _not_parsed(where) from None
    if python_error is not None and _misread(data):
        raise _not_parsed(_python_where(python_error, code))
    return data


def _is_code(node: ast.AST) -> bool:
    """A call, attribute or lambda, or arithmetic on literals (``0.1*8``: YAML would misread the text
    around it). An operation on bare words (``a-b``) stays YAML's; a negative number is a literal."""
    if isinstance(node, (ast.Call, ast.Attribute, ast.Lambda)):
        return True
    if not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)) \
            or any(isinstance(n, ast.Name) for n in ast.walk(node)):
        return False
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return True
    return False


def _refuse_duplicate_keys(code: str) -> None:
    """A key given twice in one dict of a Python literal: Python keeps the last one silently, a
    schedule must not ({'lr': 0.1, 'lr': 0.5} trained at 0.5). (YAML's are refused by bounded.)"""
    for node in ast.walk(ast.parse(code, mode="eval")):
        if isinstance(node, ast.Dict):
            seen: set = set()
            for key in node.keys:
                if isinstance(key, ast.Constant):
                    if key.value in seen:
                        raise PhaseError(f"phases: line {key.lineno}, column {key.col_offset + 1}: "
                                         f"duplicate key {key.value!r}")
                    seen.add(key.value)


def _not_parsed(where: str) -> PhaseError:
    return PhaseError(f"phases: not a Python literal, JSON or YAML list of dicts: {where} "
                      "(only literals are accepted; nothing is evaluated)")


def _python_where(e: SyntaxError, text: str) -> str:
    line, col = e.lineno or 1, e.offset or 1
    near = text.splitlines()[line - 1][col - 1:col + 19] if line <= len(text.splitlines()) else ""
    return f"line {line}, column {col}: {e.msg}" + (f" (near {near!r})" if near else "")


def _misread(data: Any) -> bool:
    """YAML read as plain text what only Python syntax means (tuples, quotes): the text was a
    malformed Python literal, and its Python error is the one to report."""
    if isinstance(data, str):
        return any(c in data for c in "()'\"")
    if isinstance(data, dict):
        return any(_misread(k) or _misread(v) for k, v in data.items())
    if isinstance(data, list):
        return any(_misread(v) for v in data)
    return False


def _to_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_lists(v) for k, v in value.items()}
    return value


def parse_schedule(source: str | Sequence[dict], step_start: bool = False, trained: bool = False) -> Schedule:
    """Parse and validate; raises PhaseError with a one-line message on the first problem.
    ``step_start``: airbench's lr arithmetic (the cifar recipe's; ``Schedule.step_start``).
    ``trained``: a schedule a run already trains (a checkpoint's, a run's metadata), so a data phase
    that never runs, refused in a new schedule, is let be: the run goes on as it began."""
    raw = load_phases(source)
    data: list[DataPhase] = []
    lrs: list[LrPhase] = []
    for i, p in enumerate(raw):
        err = _reporter(i)
        if not isinstance(p, dict):
            raise PhaseError(f"phase {i}: expected a dict, got {type(p).__name__}")
        for k in p:
            if k not in KEYS:
                raise PhaseError(f"phase {i}: unknown key {k!r} (allowed: {', '.join(KEYS)})")
        if "ep" not in p:
            raise err("ep", "missing")
        start, end = _epochs(p["ep"], err)
        if "bs" not in p and "lr" not in p:
            raise err("bs", "a phase needs 'bs' (data phase) or 'lr' (lr phase)")
        if "bs" in p:
            data.append(_data_phase(p, start, data, err))
        elif any(k in p for k in ("sz", "trndir", "valdir", "min_scale", "rect_val", "keep_dl")):
            bad = next(k for k in ("sz", "trndir", "valdir", "min_scale", "rect_val", "keep_dl") if k in p)
            raise err(bad, "only a data phase (one with 'bs') may set it")
        if "lr" in p:
            lrs.append(_lr_phase(p, start, end, lrs, err))
        elif "epoch_step" in p:
            raise err("epoch_step", "only an lr phase may set it")
    if not data:
        raise PhaseError("phases: no data phase (a dict with 'bs' and 'sz')")
    if not lrs:
        raise PhaseError("phases: no lr phase (a dict with 'lr')")
    if lrs[0].start != 0:
        raise PhaseError(f"phases: lr does not cover epoch 0 (first lr phase starts at {lrs[0].start})")
    if lrs[-1].end is None:
        raise PhaseError(f"phase {raw.index(next(p for p in reversed(raw) if 'lr' in p))}: key 'ep': "
                         "the last lr phase needs an end epoch [start, end]: it sets the run's length")
    schedule = Schedule(tuple(data), tuple(lrs), tuple(raw), step_start)
    # the lr phases set the run's length; a data phase starting at or after its end never runs (a typo)
    for i, ph in zip((i for i, p in enumerate(raw) if "bs" in p), data):
        if ph.start >= schedule.total_epochs and not trained:
            raise PhaseError(f"phase {i}: key 'ep': the data phase at epoch {ph.start} never runs: the last epoch "
                             f"is {schedule.num_epochs - 1} (the lr phases end at {schedule.total_epochs:g})")
    return schedule


def _reporter(i: int):
    return lambda key, msg: PhaseError(f"phase {i}: key {key!r}: {msg}")


def _number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _epochs(ep: Any, err) -> tuple[float, float | None]:
    if _number(ep):
        start, end = ep, None
    elif isinstance(ep, list) and len(ep) == 2 and all(_number(e) for e in ep):
        start, end = ep
        if end <= start:
            raise err("ep", f"end epoch {end} must be after start {start}")
    else:
        raise err("ep", f"expected a number or [start, end], got {ep!r}")
    if start < 0:
        raise err("ep", f"negative epoch {start}")
    if max(start, end or 0) > MAX_EPOCHS:
        raise err("ep", f"epoch {max(start, end or 0)} is past the maximum of {MAX_EPOCHS} epochs")
    return start, end


def _data_phase(p: dict, start: float, prev: list[DataPhase], err) -> DataPhase:
    if start != int(start):
        raise err("ep", f"a data phase starts at a whole epoch, got {start}")
    start = int(start)
    if not prev and start != 0:
        raise err("ep", f"the first data phase must start at epoch 0, got {start}")
    if prev and start <= prev[-1].start:
        raise err("ep", f"epochs not increasing: data phase at {start} after one at {prev[-1].start}")
    bs = p["bs"]
    if not isinstance(bs, int) or isinstance(bs, bool) or not 0 < bs <= MAX_BATCH:
        raise err("bs", f"expected a positive integer <= {MAX_BATCH}, got {bs!r}")
    keep_dl = p.get("keep_dl", False)
    if not isinstance(keep_dl, bool):  # before it is used: 'false' (a string) or 1 read as true
        raise err("keep_dl", f"expected true or false, got {keep_dl!r}")
    if keep_dl:
        if not prev:
            raise err("keep_dl", "the first data phase has no loader to keep")
        # imagenet18's own schedules repeat the unchanged 'sz' in keep_dl phases: accept that
        extra = [k for k in ("sz", "trndir", "valdir", "min_scale", "rect_val") if k in p
                 and not (k == "sz" and p["sz"] == prev[-1].size)]
        if extra:
            raise err(extra[0], "a keep_dl phase changes only the batch size")
        return DataPhase(**{**prev[-1].__dict__, "start": start, "batch_size": bs, "keep_dl": True})
    if "sz" not in p:
        raise err("sz", "missing (a data phase needs 'sz' and 'bs')")
    sz = p["sz"]
    if not isinstance(sz, int) or isinstance(sz, bool) or not 0 < sz <= MAX_SIZE:
        raise err("sz", f"expected a positive integer <= {MAX_SIZE} (px), got {sz!r}")
    min_scale = p.get("min_scale", DEFAULT_MIN_SCALE)
    if not _number(min_scale) or not 0 < min_scale <= 1:
        raise err("min_scale", f"expected a number in (0, 1], got {min_scale!r}")
    if not isinstance(p.get("rect_val", False), bool):  # keep_dl's is checked above, before its use
        raise err("rect_val", f"expected true or false, got {p['rect_val']!r}")
    trndir = p.get("trndir", "")
    valdir = p.get("valdir", trndir)
    for key, v in (("trndir", trndir), ("valdir", valdir)):
        if not isinstance(v, str):
            raise err(key, f"expected a string, got {v!r}")
    return DataPhase(start=start, size=sz, batch_size=bs, train_dir=trndir, val_dir=valdir,
                     min_scale=float(min_scale), rect_val=p.get("rect_val", False), keep_dl=False)


def _lr_phase(p: dict, start: float, end: float | None, prev: list[LrPhase], err) -> LrPhase:
    lr = p["lr"]
    if _number(lr):
        lr_start, lr_end = lr, None
    elif isinstance(lr, list) and len(lr) == 2 and all(_number(v) for v in lr):
        lr_start, lr_end = lr
        if end is None:
            raise err("lr", "a linear lr [start, end] needs an end epoch: 'ep': [start, end]")
    else:
        raise err("lr", f"expected a number or [start, end], got {lr!r}")
    if min(lr_start, lr_end if lr_end is not None else lr_start) < 0:
        raise err("lr", f"negative learning rate {lr!r}")
    if prev:
        last = prev[-1]
        if start <= last.start or (last.end is not None and start < last.end):
            span = f"{last.start}..{last.end}" if last.end is not None else f"{last.start}"
            raise err("ep", f"epochs not increasing: lr phase at {start} overlaps the one at {span}")
    epoch_step = p.get("epoch_step", False)
    if not isinstance(epoch_step, bool):
        raise err("epoch_step", f"expected true or false, got {epoch_step!r}")
    if lr_end is None and end is not None:  # a constant lr over [start, end)
        lr_end = lr_start
    return LrPhase(start=start, end=end, lr_start=lr_start, lr_end=lr_end, epoch_step=epoch_step)
