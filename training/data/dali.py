"""The DALI backend: decode and augment in DALI's C++ threads, or on the GPU (nvJPEG), same protocol.

Importing this module fails with ImportError when DALI cannot be loaded, which is what
``get_backend('auto')`` relies on to fall back to torchvision.

What it shares with the torchvision backend (tree.py, rectval.py): the tree index with its
bad-image detection, sorted-class labels, each rank's shard of an epoch, validation batching and
the validation geometry (resize target and centre-crop anchor, computed once for both backends).

Why the files come from an ``external_source`` instead of DALI's file reader with shard_id/num_shards:
DALI's shards are contiguous slices that rotate every epoch, its random_shuffle only mixes a
1024-sample buffer, and pad_last_batch can hand a rank a whole batch of padding (DALI issues #3855,
#2881, #1203). Feeding this rank's DistributedSampler-style shard of one global permutation (seeded
by seed + epoch) gives a true per-epoch shuffle, every image at least once per epoch across ranks,
the same number of batches on every rank, and an exact epoch on resume. Because the source is a
callback indexed by batch, one pipeline serves a whole data phase: each pass only resets it, so
nvJPEG's buffers are allocated once per phase, not once per epoch (a rebuild cost ~1.2 s on the CPU).
Files are read by a small thread pool (file reads release the GIL) so the training thread only waits
for the batch it is about to use.

On a GPU (``mixed``): the JPEG is parsed on the CPU threads and decoded by nvJPEG (and the hardware
decoder where the GPU has one, ``hw_decoder_load``); only the crop's region is decoded (``image_slice``,
for the window the torchvision backend would draw); images and labels leave the pipeline on the
device, in fp16 (cast to bf16 on the device when asked: DALI has no bf16 output) and NHWC for
channels_last, and nothing in a step waits on the host. ``adjust_orientation`` is off, so the header
sizes the index keeps are the decoded sizes, as for PIL (the torchvision backend, and imagenet18);
whole-image decodes use PIL's chroma upsampling too (``jpeg_fancy_upsampling``).
"""
from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from PIL import Image

try:
    import nvidia.dali.backend as dali_backend
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except OSError as e:  # a broken install (missing shared library) falls back like a missing one
    raise ImportError(f"DALI failed to load: {e}") from e

from training.data import IMAGENET_MEAN, IMAGENET_STD, DataError, LoaderSpec
from training.data.imagefolder import train_crop
from training.data.rectval import ValBatch, val_batches, val_geometry
from training.data.tree import TreeIndex, shard_batches, train_batches, train_index, val_index
from training.headers import pil_decodes

_MEAN = [255 * m for m in IMAGENET_MEAN]
_STD = [255 * s for s in IMAGENET_STD]
PREFETCH = 2  # batches DALI prepares ahead of the one being used
READ_AHEAD = 4  # batches whose files are read (and crops drawn) ahead of the one DALI asks for


class DaliLoader:
    """One phase's train or validation loader. Its pipeline is built at the first pass and reset at
    each later one; it is rebuilt only when the batch size changes (keep_dl) or a pass was abandoned."""

    def __init__(self, spec: LoaderSpec, index: TreeIndex, train: bool):
        self.spec, self.train = spec, train
        self.classes = index.classes
        self.num_images = len(index.paths)
        self.skipped = dict(index.skipped)
        self.batch_size = spec.phase.batch_size
        self.epoch = 0
        self._paths, self._labels, self._sizes = index.paths, np.array(index.labels, np.int32), index.sizes
        self._batches: list[tuple[int, ...]] = []  # this pass's batches, as indices into the index
        self._ahead: dict[int, Future] = {}
        self._pipe: Pipeline | None = None
        self._iter: DALIGenericIterator | None = None
        self._pipe_batch = 0  # the batch size the pipeline was built for
        self._pool = ThreadPoolExecutor(max(1, min(8, spec.workers)), thread_name_prefix="dali-read")
        self._val = None if train else self._val_batches()

    def _val_batches(self) -> list[ValBatch]:
        return val_batches(self._sizes, self.batch_size, self.spec.phase.size, self.spec.rank,
                           self.spec.world_size, self.spec.phase.rect_val)

    def __len__(self) -> int:
        if self.train:
            return train_batches(self.num_images, self.batch_size, self.spec.world_size)
        return len(self._val)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the next pass reads this epoch's shard

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size  # the next pass rebuilds with it; nothing else changes
        if not self.train:
            self._val = self._val_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if len(self) == 0:
            return
        self._batches = self._pass_batches()
        self._ahead = {}  # batch -> its reading; the previous pass's are stale
        done = False
        try:
            try:  # a new iterator decodes the pass's first batch already: its errors are named too
                if self._pipe is None or self._pipe_batch != self.batch_size:
                    self._build()
                else:
                    self._iter.reset()
            except RuntimeError as e:
                raise self._decode_error(e, 0) from None
            step = 0
            while True:
                try:
                    out = next(self._iter)[0]
                except StopIteration:
                    done = True
                    return
                except RuntimeError as e:
                    raise self._decode_error(e, step) from None
                step += 1
                yield self._images(out["images"]), out["labels"].view(-1).long()
        finally:
            if not done:  # abandoned mid-epoch (or failed): its prefetched batches are stale
                self._release()

    def _pass_batches(self) -> list[tuple[int, ...]]:
        if not self.train:
            return [b.indices for b in self._val]
        s = self.spec
        return [tuple(b) for b in shard_batches(self.num_images, self.batch_size, s.seed, self.epoch, s.rank,
                                                s.world_size)]

    # ------------------------------------------------------------------------------ pipelines

    def _build(self) -> None:
        self._release()
        self._pipe = self._define()
        self._pipe.build()
        self._pipe_batch = self.batch_size
        self._iter = DALIGenericIterator(self._pipe, ["images", "labels"],
                                         last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)

    def _define(self) -> Pipeline:
        """This pass's pipeline, defined but not built: DALI checks every operator's arguments against
        its schema here, without a device, so the GPU graph is checked on the CPU too (tests)."""
        spec = self.spec
        cuda = spec.device.type == "cuda"
        device_id = None
        if cuda:
            device_id = spec.device.index if spec.device.index is not None else torch.cuda.current_device()
        pipe = Pipeline(batch_size=self.batch_size, num_threads=max(1, spec.workers), device_id=device_id,
                        prefetch_queue_depth=PREFETCH, exec_dynamic=True)
        with pipe:
            pipe.set_outputs(*(self._train_graph if self.train else self._val_graph)("mixed" if cuda else "cpu"))
        return pipe

    def _decoder_args(self, decode: str, roi: bool = False) -> dict:
        args = dict(device=decode, output_type=types.RGB, adjust_orientation=False)
        if decode == "mixed":
            # Fancy upsampling (libjpeg's, PIL's) except for ROI decodes: nvJPEG < 13.2 refuses ROI with
            # it, warns per image and decodes on the CPU instead (seen on an H200, DALI 2.4; BENCHMARKS.md).
            args.update(jpeg_fancy_upsampling=not roi, hw_decoder_load=self.spec.dali_hw_load,
                        affine=False)  # 8 ranks' threads must not all pin themselves to cores 0..W-1
        return args

    def _train_graph(self, decode: str) -> tuple:
        size = self.spec.phase.size
        encoded, labels, anchor, shape, mirror = fn.external_source(
            source=self._source, num_outputs=5, batch=True, batch_info=True,
            dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32])
        if self.spec.dali_fused_crop:  # ROI decode: only the crop's region is decoded
            images = fn.decoders.image_slice(encoded, anchor, shape, axis_names="WH",
                                             **self._decoder_args(decode, roi=True))
        else:  # the hardware decoder decodes whole images only
            images = fn.decoders.image(encoded, **self._decoder_args(decode))
            images = fn.slice(images, anchor, shape, axis_names="WH")
        images = fn.resize(images, resize_x=size, resize_y=size)
        return self._normalize(images, mirror=mirror), labels.gpu() if decode == "mixed" else labels

    def _val_graph(self, decode: str) -> tuple:
        encoded, labels, resize_hw, anchor, crop = fn.external_source(
            source=self._source, num_outputs=5, batch=True, batch_info=True,
            dtype=[types.UINT8, types.INT32, types.FLOAT, types.INT32, types.INT32])
        images = fn.decoders.image(encoded, **self._decoder_args(decode))
        # The geometry both backends share (rectval.val_geometry): resize to the target, then crop at
        # the anchor, padding with black where the crop is larger (before normalising, as torchvision).
        images = fn.resize(images, size=resize_hw)
        images = fn.slice(images, anchor, crop, axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
        return self._normalize(images), labels.gpu() if decode == "mixed" else labels

    def _source(self, info) -> tuple:
        """external_source callback: batch ``info.iteration`` of this pass, StopIteration past the end
        (DALI may ask again while prefetching). The next READ_AHEAD batches are read and prepared on
        the reader threads meanwhile, so this (on the training thread) mostly hands over a ready one."""
        i = info.iteration
        if i >= len(self._batches):
            raise StopIteration
        make = self._train_batch if self.train else self._val_batch
        for j in range(i, min(i + READ_AHEAD, len(self._batches))):
            if j not in self._ahead:
                self._ahead[j] = self._pool.submit(make, self._batches[j], self.epoch if self.train else self._val[j].hw)
        return self._ahead.pop(i).result()

    def _read(self, indices: tuple[int, ...]) -> list[np.ndarray]:
        out = []
        for i in indices:
            with open(self._paths[i], "rb") as f:  # the read releases the GIL
                out.append(np.frombuffer(f.read(), dtype=np.uint8))
        return out

    def _train_batch(self, b: tuple[int, ...], epoch: int) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Files, labels, crop windows (x, y), (w, h) and flips: the torchvision backend's windows, so
        augmentation is a function of (seed, epoch, image) here too and a resumed run sees the batches
        the uninterrupted one did."""
        spec = self.spec
        crops = [train_crop(spec.seed, epoch, i, *self._sizes[i], spec.phase.min_scale) for i in b]
        return (self._read(b), self._labels[list(b)], np.array([c[0][:2] for c in crops], np.int32),
                np.array([c[0][2:] for c in crops], np.int32), np.array([c[1] for c in crops], np.int32))

    def _val_batch(self, b: tuple[int, ...], hw: tuple[int, int]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        geo = [val_geometry(*self._sizes[i], self.spec.phase.size, hw) for i in b]
        return (self._read(b), self._labels[list(b)], np.array([g.resize_hw for g in geo], np.float32),
                np.array([g.anchor_yx for g in geo], np.int32), np.array([hw] * len(b), np.int32))

    def _normalize(self, images, **kwargs):
        half = self.spec.dtype in (torch.float16, torch.bfloat16)  # bf16: cast from fp16 on the device
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if half else types.FLOAT, mean=_MEAN, std=_STD,
            output_layout="HWC" if self.spec.channels_last else "CHW", **kwargs)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.channels_last:
            x = x.permute(0, 3, 1, 2)  # NHWC from DALI viewed as NCHW: channels_last strides, no copy
        return x.to(device=self.spec.device, dtype=self.spec.dtype, non_blocking=True)

    def _decode_error(self, e: RuntimeError, step: int) -> Exception:
        """DALI cannot drop a sample mid-pipeline: name the file in one line and stop. external_source
        cannot put the path in DALI's message, so the batches the pipeline may have been decoding
        (this one and those prefetched) are decoded with PIL to find it."""
        if "decode" not in str(e).lower():
            return e
        ahead = [i for b in self._batches[step:step + PREFETCH + 1] for i in b]
        path = next((self._paths[i] for i in ahead if not pil_decodes(self._paths[i])), None)
        if path is None:
            m = re.search(r"[Ff]ailed to decode[^\n]*", str(e))
            return DataError(f"DALI could not decode an image of batch {step}: "
                             f"{m.group(0) if m else str(e).splitlines()[0]} (--loader torchvision drops such files)")
        self.skipped[path] = "DALI could not decode it"
        return DataError(f"unreadable image {path}: DALI could not decode it past a valid header "
                         "(remove the file, or use --loader torchvision, which drops it)")

    def _release(self) -> None:
        """Drop the iterator and pipeline now and return DALI's pooled memory (DALI #5609)."""
        if self._pipe is None:
            return
        self._iter = None
        self._pipe = None
        self._pipe_batch = 0
        dali_backend.ReleaseUnusedMemory()

    def close(self) -> None:
        self._release()
        self._pool.shutdown(wait=False)


_PROBED: dict[str, str | None] = {}  # device -> None (works) or why not


def probe(device: torch.device) -> None:
    """On a GPU, decode one small JPEG with the ``mixed`` decoder once per process: DALI may import
    and still fail with this driver or CUDA version. RuntimeError (one line) when it does not work."""
    if device.type != "cuda":
        return
    key = str(device)
    if key not in _PROBED:
        import io
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
        jpeg = np.frombuffer(buf.getvalue(), np.uint8)
        try:
            pipe = Pipeline(batch_size=1, num_threads=1,
                            device_id=device.index if device.index is not None else torch.cuda.current_device())
            with pipe:
                pipe.set_outputs(fn.decoders.image(fn.external_source(source=lambda: [jpeg], batch=True),
                                                   device="mixed"))
            pipe.build()
            pipe.run()
            _PROBED[key] = None
        except Exception as e:  # noqa: BLE001 - any failure here means "not usable on this GPU"
            _PROBED[key] = f"DALI's GPU decoder failed on {device}: {str(e).strip().splitlines()[0]}"
        dali_backend.ReleaseUnusedMemory()
    if _PROBED[key]:
        raise RuntimeError(_PROBED[key])


def train_loader(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, train_index(spec), train=True)


def val_loader(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, val_index(spec), train=False)
