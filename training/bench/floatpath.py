"""The classic torchvision input path, kept only to measure ours against (issue 11, ``bench pipeline
--loader torchvision:float``): ``to_tensor`` + ``normalize`` in each worker, so float32 CHW batches,
4x the bytes of our uint8 ones, cross from the workers to the main process and to the device, which
then only changes dtype and memory format. Crops, flips and batches are ours (same samples)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF

from training.data import IMAGENET_MEAN, IMAGENET_STD, LoaderSpec
from training.data import imagefolder as tv
from training.data.tree import train_index


class FloatSamples(tv._Samples):
    def __getitem__(self, key: tuple[int, ...]) -> tuple[np.ndarray | None, int, str | None]:
        img, label, bad = super().__getitem__(key)
        if img is None:
            return img, label, bad
        # a writable copy, as to_tensor makes of a PIL image (the classic path); the read-only array
        # itself made torch warn once per worker process
        return TF.normalize(TF.to_tensor(np.array(img)), IMAGENET_MEAN, IMAGENET_STD).numpy(), label, bad


class FloatLoader(tv.TorchvisionLoader):
    def _normalise(self, imgs: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.spec.channels_last else torch.contiguous_format
        return imgs.to(self.spec.device, non_blocking=True).to(dtype=self.spec.dtype, memory_format=fmt)


def train_loader(spec: LoaderSpec) -> FloatLoader:
    index = train_index(spec)
    dataset = FloatSamples(index, spec.phase.size, spec.phase.min_scale, spec.seed, train=True)
    return FloatLoader(spec, index, dataset, tv._TrainBatches(len(index.paths), spec.phase.batch_size, spec))
