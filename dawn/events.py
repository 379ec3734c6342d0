"""Read TensorBoard event files into plain records, every value kept, without TensorFlow.

PATH is one event file, or a run directory whose ``events.out.tfevents.*`` files directly inside it
(not in subdirectories: a parent of several runs must not be merged into one) are read as one run:

- files are read in the order of their first event's wall time (when each writer started), so a
  run resumed after a crash reads the resumed file last;
- for a duplicated (tag, step) the value read last wins, so the resumed file overrides the crashed
  one, as TensorBoard shows it; ``Run.earliest`` still sees the overridden values, for a start tag
  that a trainer logs again at every launch;
- a ``SessionLog.START`` event at step S (``SummaryWriter(purge_step=S)``) drops everything read
  before it at steps >= S, as TensorBoard does, so a resume from an earlier checkpoint loses the
  crashed attempt's orphaned tail;
- a file or directory that cannot be read is an error naming it;
- a corrupt record (a checksum mismatch) is an error naming its file and byte offset; a last
  record cut short by the end of its file (a writer killed mid-write) ends the file quietly;
- in a directory, empty event files (a writer killed before its first flush) are skipped and listed
  in ``Run.skipped``; an empty file given as PATH, or a directory of only empty files, is an error.

Scalars may be ``simple_value`` (torch's SummaryWriter) or one-element tensors (TF2-style writers,
whose plugin metadata appears only on a tag's first value); text summaries are string tensors. A
tensor numpy cannot hold (bfloat16, variant) is skipped when no plugin claims it as a scalar or text;
one that is claimed, or whose content does not fit its dtype, is an error naming its file, tag and step.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

EVENT_GLOB = "events.out.tfevents.*"
METADATA_TAG = "run/metadata"
LAUNCH_TAG = "run/launch"  # each launch's command and torch, at the step it started from


class EventsError(ValueError):
    """Event data that cannot be used; the message is one line naming the path and the problem."""


@dataclass(frozen=True)
class Scalar:
    step: int
    wall_time: float
    value: float
    file: Path = field(compare=False, repr=False)  # the event file it was read from, for errors


@dataclass(frozen=True)
class Text:
    step: int
    wall_time: float
    text: str


@dataclass(frozen=True)
class Run:
    path: Path
    files: tuple[Path, ...]  # the event files read, in read order
    skipped: tuple[Path, ...]  # empty event files left out of a directory
    scalars: dict[str, list[Scalar]] = field(default_factory=dict)  # sorted by step
    # Each tag's value with the earliest wall time, whatever its step: values that a later file
    # overrode at their step count, values a purge dropped do not.
    earliest: dict[str, Scalar] = field(default_factory=dict)
    texts: dict[str, list[Text]] = field(default_factory=dict)  # sorted by step


def event_files(path: str | Path) -> list[Path]:
    """The event files PATH names (itself, or those directly inside it), unordered."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise EventsError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise EventsError(f"{path}: not a file or directory")
    try:
        entries = list(path.iterdir())  # unlike glob, a directory that cannot be listed is an error
    except OSError as e:
        raise EventsError(f"{path}: cannot read directory ({e.strerror or e})") from None
    files = sorted(p for p in entries if p.match(EVENT_GLOB) and p.is_file())
    if not files:
        nested = sum(1 for p in path.rglob(EVENT_GLOB) if p.is_file())
        hint = f" ({nested} in subdirectories: pass one run directory)" if nested else ""
        raise EventsError(f"{path}: no event files ({EVENT_GLOB}){hint}")
    return files


def load_run(path: str | Path) -> Run:
    """Every scalar and text summary of the run at PATH (see the module doc for merge rules)."""
    path = Path(path)
    started = []
    skipped = []
    for f in event_files(path):
        first = next(iter(_events(f)), None)
        if first is None:
            skipped.append(f)
        else:
            started.append((first.wall_time, f.name, f))
    if not started:
        what = "empty event file" if path.is_file() else "only empty event files"
        raise EventsError(f"{path}: {what} (no events; not written yet, or not an event file)")
    files = tuple(f for _, _, f in sorted(started))

    from tensorboard.compat.proto.event_pb2 import SessionLog

    records: dict[tuple[str, int], list[Scalar | Text]] = {}  # every value at (tag, step), read order
    plugins: dict[str, str] = {}  # tag -> plugin name, remembered from the tag's first value
    for f in files:
        for event in _events(f):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                records = {k: v for k, v in records.items() if k[1] < event.step}
            for value in event.summary.value:
                name = value.metadata.plugin_data.plugin_name
                if name:
                    plugins.setdefault(value.tag, name)
                record = _record(value, plugins.get(value.tag), event.step, event.wall_time, f)
                if record is not None:
                    records.setdefault((value.tag, event.step), []).append(record)
    run = Run(path=path, files=files, skipped=tuple(skipped))
    for (tag, _), values in sorted(records.items(), key=lambda kv: kv[0][1]):
        record = values[-1]
        target = run.scalars if isinstance(record, Scalar) else run.texts
        target.setdefault(tag, []).append(record)
        for v in values:
            if isinstance(v, Scalar) and (tag not in run.earliest
                                          or v.wall_time < run.earliest[tag].wall_time):
                run.earliest[tag] = v
    return run


def load_scalars(path: str | Path) -> dict[str, list[Scalar]]:
    """``{tag: [Scalar(step, wall_time, value), ...]}`` sorted by step, every value kept."""
    return load_run(path).scalars


def run_metadata(run: Run) -> dict | None:
    """The JSON object the trainer logged as the text summary ``run/metadata`` (the latest one), or
    None."""
    texts = _texts(run, METADATA_TAG)
    return _json_object(run, METADATA_TAG, texts[-1]) if texts else None


def run_launches(run: Run) -> list[dict]:
    """Each launch's JSON object (``run/launch``: its command and torch), in step order; a launch a
    restart redid is not among them (the restart's record at the same step replaced it). [] for a
    run logged before these records were."""
    return [_json_object(run, LAUNCH_TAG, t) for t in _texts(run, LAUNCH_TAG)]


def _texts(run: Run, tag: str) -> list[Text]:
    # torch's ``add_text`` appends ``/text_summary`` to the tag, so both spellings are read
    return run.texts.get(tag) or run.texts.get(tag + "/text_summary") or []


def _json_object(run: Run, tag: str, text: Text) -> dict:
    # TensorBoard renders text as markdown, so a writer may have wrapped the JSON in a code fence.
    body = text.text[text.text.find("{"):text.text.rfind("}") + 1]
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        raise EventsError(f"{run.path}: {tag} is not valid JSON ({e})") from None
    except RecursionError:
        raise EventsError(f"{run.path}: {tag} is not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise EventsError(f"{run.path}: {tag} is not a JSON object")
    return obj


def _events(path: Path):
    # The TFRecord framing is read here rather than by tensorboard's loader, which ends a file
    # quietly at ANY bad checksum, so a corrupt record mid-file would silently cut the run short.
    # Each record: uint64 length, its masked CRC-32C, the data, the data's masked CRC-32C. Only a
    # last record cut short by the end of the file (a writer killed mid-write) ends it quietly.
    # The Event protos are used raw (no compat rewriting), so this module decides itself how
    # simple_value, tensor scalars and text are read.
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        with open(path, "rb") as f:  # read to the end, not to a size: /proc files say 0
            offset = 0
            while len(header := f.read(12)) == 12:
                length, length_crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != length_crc:
                    raise EventsError(f"{path}: corrupt record at byte {offset} (bad length checksum)")
                data = _read_upto(f, length)  # a length past the file's end: a torn record, not a MemoryError
                crc = f.read(4)
                if len(crc) < 4:
                    break  # a torn last record
                if masked_crc32c(data) != struct.unpack("<I", crc)[0]:
                    raise EventsError(f"{path}: corrupt record at byte {offset} (bad data checksum)")
                try:
                    event = Event.FromString(data)
                except DecodeError:  # checksums that match over bytes that are no Event
                    raise EventsError(f"{path}: corrupt record at byte {offset} (not an Event)") from None
                yield event
                offset += 16 + length
    except OSError as e:  # no permission, an I/O error: the raw message would not name the file
        raise EventsError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_upto(f, length: int, chunk: int = 1 << 24) -> bytes:
    """Up to ``length`` bytes of ``f``, fewer at its end, read in chunks: a record header may claim
    any 64-bit length, and one read of it would ask for that much memory first."""
    parts = []
    while length > 0 and (part := f.read(min(length, chunk))):
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def _record(value, plugin: str | None, step: int, wall_time: float,
            file: Path) -> Scalar | Text | None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return Scalar(step, wall_time, float(value.simple_value), file)
    if kind != "tensor" or plugin not in (None, "scalars", "text"):
        return None  # images, histograms, audio, graphs: not needed here
    from tensorboard.compat.proto.types_pb2 import DataType
    from tensorboard.util.tensor_util import make_ndarray

    try:
        array = make_ndarray(value.tensor)
    except (TypeError, KeyError, ValueError) as e:
        # a dtype numpy has no type for (bfloat16, variant, resource: TypeError, KeyError), or content
        # that does not fit its dtype and shape (ValueError); tensorboard's traceback names no file
        if plugin is None and not isinstance(e, ValueError):
            return None  # another writer's tensor of a kind this reader has no use for
        dtype = DataType.Name(value.tensor.dtype) if value.tensor.dtype in DataType.values() else value.tensor.dtype
        raise EventsError(f"{file}: {value.tag} at step {step}: unreadable {dtype} tensor") from None
    if array.dtype.kind in "SUO":
        if plugin == "scalars":
            return None
        return Text(step, wall_time, "\n".join(
            s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in array.flat))
    if plugin == "text" or array.size != 1 or array.dtype.kind not in "fiub":
        return None
    return Scalar(step, wall_time, float(array.reshape(())), file)
