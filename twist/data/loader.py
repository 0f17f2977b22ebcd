"""The pretraining loader: the data section, and the batches of views it gives each rank."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import DataLoader

from twist.data.datasets import SourceConfig, ViewsDataset, build_source, collate_views
from twist.data.device_augment import build_view_planner, collate_planned
from twist.data.samplers import EpochSampler
from twist.data.transforms import build_train_transform
from twist.data.view_specs import AugmentConfig, ViewSpec
from twist.distributed import DistEnv


@dataclass(frozen=True)
class DataConfig:
    """``data`` of a pretraining config: which images (``source``), the split pretraining reads, the
    loader's workers, and what happens to unreadable images."""

    source: SourceConfig
    train_split: str
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int
    skip_corrupt: bool
    max_skipped_fraction: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> DataConfig:
        data = cfg["data"]
        loading = {f.name: data[f.name] for f in fields(cls) if f.name != "source"}
        return cls(SourceConfig.from_config(cfg), **loading)


def build_train_loader(data: DataConfig, augment: AugmentConfig, stages: list[tuple[int, list[ViewSpec]]],
                       batch_size: int, seed: int, device: torch.device,
                       env: DistEnv = DistEnv()) -> tuple[DataLoader, EpochSampler]:
    """This rank's batches of ``batch_size`` images of ``data.train_split``, each made into the views of the
    stage of ``stages`` (``view_specs.view_stages``) its epoch is in; the order and the views follow ``seed``."""
    # With augment.on_device the workers return the decoded image and every view's drawn parameters.
    build, collate = ((build_view_planner, collate_planned) if augment.on_device
                      else (build_train_transform, collate_views))
    transforms = [(start_epoch, build(augment, views)) for start_epoch, views in stages]
    dataset = ViewsDataset(build_source(data.source, data.train_split), transforms[0][1], seed,
                           skip_corrupt=data.skip_corrupt, later_stages=transforms[1:])
    sampler = EpochSampler(len(dataset), batch_size, seed=seed, rank=env.rank, world_size=env.world_size)
    workers = data.num_workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=data.pin_memory and device.type == "cuda",
                        persistent_workers=data.persistent_workers and workers > 0, drop_last=True,
                        prefetch_factor=data.prefetch_factor if workers > 0 else None,
                        # Its own generator: creating an iterator then draws no number from the global
                        # stream, which the model's dropout uses and a resumed run restores.
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
