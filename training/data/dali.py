"""The DALI backend: decode and augment in DALI's C++ threads (or on the GPU), same protocol.

Importing this module fails with ImportError when DALI cannot be loaded, which is what
``get_backend('auto')`` relies on to fall back to torchvision.

What it shares with the torchvision backend (tree.py, rectval.py): the tree index with its
bad-image detection, sorted-class labels, each rank's shard of an epoch, and validation batching.

Why each rank reads its own file list instead of DALI's shard_id/num_shards: DALI's shards are
contiguous slices that rotate every epoch, its random_shuffle only mixes a 1024-sample buffer,
and pad_last_batch can hand a rank a whole batch of padding (DALI issues #3855, #2881, #1203).
Feeding ``fn.readers.file`` this rank's DistributedSampler-style shard of one global permutation
(seeded by seed + epoch) gives a true per-epoch shuffle, every image at least once per epoch across
ranks, the same number of batches on every rank, and an exact epoch on resume. The train pipeline
is therefore built per pass (cheap: ~10 ms) and deleted right after it, so old pipelines never
accumulate (DALI #5609) and validation does not run beside an idle train pipeline.
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterator

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
from training.data.imagefolder import RRC_RATIO, VAL_RESIZE
from training.data.tree import TreeIndex, shard_indices, train_batches, train_index, val_index
from training.data.rectval import ValBatch, val_batches

_MEAN = [255 * m for m in IMAGENET_MEAN]
_STD = [255 * s for s in IMAGENET_STD]
# nvJPEG scratch preallocation from NVIDIA's ResNet-50 examples: avoids regrowing it mid-epoch.
_NVJPEG_PADDING = dict(device_memory_padding=211025920, host_memory_padding=140544512)


class DaliLoader:
    """One phase's train or validation loader; a pipeline exists only while a pass is running."""

    def __init__(self, spec: LoaderSpec, index: TreeIndex, train: bool):
        self.spec, self.train = spec, train
        self.classes = index.classes
        self.num_images = len(index.paths)
        self.skipped = dict(index.skipped)
        self.batch_size = spec.phase.batch_size
        self.epoch = 0
        self._paths, self._labels, self._sizes = index.paths, index.labels, index.sizes
        self._pipe: Pipeline | None = None
        self._iter: DALIGenericIterator | None = None
        self._val = None if train else self._val_batches()

    def _val_batches(self) -> list[ValBatch]:
        return val_batches(self._sizes, self.batch_size, self.spec.phase.size, self.spec.rank,
                           self.spec.world_size, self.spec.phase.rect_val)

    def __len__(self) -> int:
        if self.train:
            return train_batches(self.num_images, self.batch_size, self.spec.world_size)
        return len(self._val)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the next pass builds its pipeline for this epoch

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size  # the next pass builds with it; nothing else changes
        if not self.train:
            self._val = self._val_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._release()  # a pass abandoned half way leaves its pipeline mid-epoch: start afresh
        if len(self) == 0:
            return
        self._pipe = self._train_pipe() if self.train else self._val_pipe()
        self._iter = DALIGenericIterator(
            self._pipe, ["images", "labels"], reader_name="Reader" if self.train else None,
            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        try:
            for step in range(len(self)):
                try:
                    out = next(self._iter)[0]
                except StopIteration:
                    return
                except RuntimeError as e:
                    raise self._decode_error(e, step) from None
                yield self._images(out["images"]), out["labels"].view(-1).long().to(self.spec.device)
        finally:
            self._release()

    # ------------------------------------------------------------------------------ pipelines

    def _new_pipe(self, seed: int) -> tuple[Pipeline, str]:
        cuda = self.spec.device.type == "cuda"
        device_id = None
        if cuda:
            device_id = self.spec.device.index if self.spec.device.index is not None else torch.cuda.current_device()
        pipe = Pipeline(batch_size=self.batch_size, num_threads=max(1, self.spec.workers),
                        device_id=device_id, seed=seed, prefetch_queue_depth=2)
        return pipe, "mixed" if cuda else "cpu"

    def _train_pipe(self) -> Pipeline:
        spec = self.spec
        order = shard_indices(self.num_images, spec.seed, self.epoch, spec.rank, spec.world_size)
        pipe, decode = self._new_pipe(_seed(spec.seed, self.epoch, spec.rank))
        with pipe:
            encoded, labels = fn.readers.file(
                files=[self._paths[i] for i in order], labels=[self._labels[i] for i in order],
                random_shuffle=False, pad_last_batch=True, name="Reader")
            # Fused random crop + decode: only the crop's region is decoded (ROI decoding).
            images = fn.decoders.image_random_crop(
                encoded, device=decode, output_type=types.RGB, random_area=[spec.phase.min_scale, 1.0],
                random_aspect_ratio=list(RRC_RATIO), num_attempts=10,
                **(_NVJPEG_PADDING if decode == "mixed" else {}))
            images = fn.resize(images, resize_x=spec.phase.size, resize_y=spec.phase.size)
            pipe.set_outputs(self._normalize(images, mirror=fn.random.coin_flip(probability=0.5)), labels)
        return pipe

    def _val_pipe(self) -> Pipeline:
        pipe, decode = self._new_pipe(_seed(self.spec.seed, 0, self.spec.rank))
        with pipe:
            encoded, labels, hw = fn.external_source(
                source=self._val_source(), num_outputs=3, batch=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT])
            images = fn.decoders.image(encoded, device=decode, output_type=types.RGB,
                                       **(_NVJPEG_PADDING if decode == "mixed" else {}))
            images = fn.resize(images, resize_shorter=int(self.spec.phase.size * VAL_RESIZE))
            # Centre crop to the batch's (h, w); a crop wider than the image pads with zeros,
            # as torchvision's center_crop does for imagenet18's rectangles.
            pipe.set_outputs(self._normalize(images, crop_h=hw[0], crop_w=hw[1], out_of_bounds_policy="pad"),
                             labels)
        return pipe

    def _val_source(self) -> Callable[[int], tuple[list, list, list]]:
        """external_source callback: batch i of this rank's validation batches, in order. Indexed by
        iteration (not an iterator) so DALI can restart it; StopIteration ends the pass."""
        batches, paths, labels = self._val, self._paths, self._labels

        def source(i: int) -> tuple[list, list, list]:
            if i >= len(batches):
                raise StopIteration
            b = batches[i]
            hw = np.array(b.hw, dtype=np.float32)
            return ([np.fromfile(paths[j], dtype=np.uint8) for j in b.indices],
                    [np.array(labels[j], dtype=np.int32) for j in b.indices], [hw] * len(b.indices))
        return source

    def _normalize(self, images, **kwargs):
        half = self.spec.dtype == torch.float16
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if half else types.FLOAT, mean=_MEAN, std=_STD,
            output_layout="HWC" if self.spec.channels_last else "CHW", **kwargs)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.channels_last:
            x = x.permute(0, 3, 1, 2)  # NHWC from DALI viewed as NCHW: channels_last strides, no copy
        return x.to(device=self.spec.device, dtype=self.spec.dtype, non_blocking=True)

    def _decode_error(self, e: RuntimeError, step: int) -> Exception:
        """DALI cannot drop a sample mid-pipeline: name the file in one line and stop. The reader
        puts the path in DALI's message; external_source cannot, so the batches the pipeline may
        have been decoding (this one and those prefetched) are decoded with PIL to find it."""
        m = re.search(r"Failed to decode sample #\d+ : (\S[^\n]*)", str(e))
        if m is not None:
            path = m.group(1).strip()
        elif not self.train and "Failed to decode" in str(e):
            ahead = [i for b in self._val[step:step + 3] for i in b.indices]
            path = next((self._paths[i] for i in ahead if not _pil_decodes(self._paths[i])), None)
            if path is None:
                return e
        else:
            return e
        self.skipped[path] = "DALI could not decode it"
        return DataError(f"unreadable image {path}: DALI could not decode it past a valid header "
                         "(remove the file, or use --loader torchvision, which drops it)")

    def _release(self) -> None:
        """Drop the pass's iterator and pipeline now and return DALI's pooled memory (DALI #5609)."""
        if self._pipe is None:
            return
        self._iter = None
        self._pipe = None
        dali_backend.ReleaseUnusedMemory()

    def close(self) -> None:
        self._release()


def _pil_decodes(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def _seed(seed: int, epoch: int, rank: int) -> int:
    """DALI's augmentation seed for one (seed, epoch, rank): deterministic, distinct per rank."""
    return int(hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).hexdigest()[:7], 16)


def train_loader(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, train_index(spec), train=True)


def val_loader(spec: LoaderSpec) -> DaliLoader:
    return DaliLoader(spec, val_index(spec), train=False)
