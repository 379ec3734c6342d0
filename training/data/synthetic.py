"""Synthetic backend for throughput runs: random images and labels made once on the device.

Each rank draws one batch of normalised-looking noise and random labels (fixed by seed and rank)
at the phase's size and reuses it every step, so the loader costs nothing and a throughput figure
measures the model alone. Batch counts follow the real loaders: train ceil(ceil(N / world) / bs)
per rank; validation covers synthetic_images // 4 images exactly once across ranks.
"""
from __future__ import annotations

from typing import Iterator

import torch

from training.data import LoaderSpec
from training.phases import rank_train_images
from training.data.imagefolder import train_batches


class SyntheticLoader:
    def __init__(self, spec: LoaderSpec, train: bool):
        self.spec, self.train = spec, train
        self.classes = [f"class{i:04d}" for i in range(spec.synthetic_classes)]
        self.num_images = spec.synthetic_images if train else max(1, spec.synthetic_images // 4)
        self.batch_size = spec.phase.batch_size
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None

    def _rank_images(self) -> int:
        s = self.spec
        if self.train:  # padded like DistributedSampler: the same count on every rank
            return rank_train_images(self.num_images, s.world_size, self.batch_size)
        return len(range(s.rank, self.num_images, s.world_size))  # exactly once across ranks

    def _batch_sizes(self) -> list[int]:
        n = self._rank_images()
        return [min(self.batch_size, n - i) for i in range(0, n, self.batch_size)]

    def __len__(self) -> int:
        if self.train:
            return train_batches(self.num_images, self.batch_size, self.spec.world_size)
        return len(self._batch_sizes())

    def _make_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        g = torch.Generator(device=s.device)
        g.manual_seed(s.seed * 1_000_003 + 2 * s.rank + (0 if self.train else 1))
        shape = (self.batch_size, 3, s.phase.size, s.phase.size)
        x = torch.randn(shape, generator=g, device=s.device).to(s.dtype)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, s.synthetic_classes, (self.batch_size,), generator=g, device=s.device)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._pool is None:
            self._pool = self._make_pool()
        x, y = self._pool
        for n in self._batch_sizes():
            yield x[:n], y[:n]

    def set_epoch(self, epoch: int) -> None:
        pass  # the same batch every epoch: only throughput matters here

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._pool = None

    def close(self) -> None:
        self._pool = None


def train_loader(spec: LoaderSpec) -> SyntheticLoader:
    return SyntheticLoader(spec, train=True)


def val_loader(spec: LoaderSpec) -> SyntheticLoader:
    return SyntheticLoader(spec, train=False)
