"""Frozen-backbone features for the evaluation protocols, extracted once per split and across ranks.

Each rank extracts a disjoint shard of the split (indices ``rank, rank + W, ...``; no padding, so no
image is seen twice) and the rows are gathered back into dataset order on every rank.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from twist.distributed import DistEnv

# Rows per collective when gathering: bounds the GPU memory that a gather of ImageNet-sized
# feature sets needs on NCCL, where the buffers must live on the GPU.
GATHER_CHUNK_ROWS = 65536


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of ``num_samples``: disjoint shards covering every index once."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


def collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: torch.Tensor, indices: torch.Tensor, total: int, env: DistEnv) -> torch.Tensor:
    """Place every rank's ``rows`` at their dataset ``indices`` in one ``(total, ...)`` CPU tensor.

    Raises if an index is missing or arrives twice: the evaluation must count each image once.
    """
    rows, indices = rows.cpu(), indices.cpu().long()
    if env.enabled:
        device = collective_device()
        counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(env.world_size)]
        dist.all_gather(counts, torch.tensor([len(indices)], device=device))
        counts = [int(c) for c in counts]
        largest = max(counts)
        padded_rows = torch.zeros((largest, *rows.shape[1:]), dtype=rows.dtype)
        padded_rows[: len(rows)] = rows
        padded_index = torch.full((largest,), -1, dtype=torch.long)
        padded_index[: len(indices)] = indices
        parts_rows: list[list[torch.Tensor]] = [[] for _ in range(env.world_size)]
        parts_index: list[list[torch.Tensor]] = [[] for _ in range(env.world_size)]
        for start in range(0, max(largest, 1), GATHER_CHUNK_ROWS):
            chunk_rows = padded_rows[start:start + GATHER_CHUNK_ROWS].to(device)
            chunk_index = padded_index[start:start + GATHER_CHUNK_ROWS].to(device)
            got_rows = [torch.empty_like(chunk_rows) for _ in range(env.world_size)]
            got_index = [torch.empty_like(chunk_index) for _ in range(env.world_size)]
            dist.all_gather(got_rows, chunk_rows)
            dist.all_gather(got_index, chunk_index)
            for r in range(env.world_size):
                parts_rows[r].append(got_rows[r].cpu())
                parts_index[r].append(got_index[r].cpu())
        rows = torch.cat([torch.cat(p)[:n] for p, n in zip(parts_rows, counts)])
        indices = torch.cat([torch.cat(p)[:n] for p, n in zip(parts_index, counts)])
    seen = torch.bincount(indices, minlength=total) if len(indices) else torch.zeros(total, dtype=torch.long)
    if len(seen) != total or (seen != 1).any():
        twice = int((seen > 1).sum())
        missing = int((seen[:total] == 0).sum())
        raise RuntimeError(f"gathered {len(indices)} rows for {total} samples: {missing} missing, "
                           f"{twice} seen more than once")
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype)
    out[indices] = rows
    return out


class FeatureExtractor(nn.Module):
    """The feature an evaluation reads from a backbone.

    ResNet: the pooled output. ViT: the CLS tokens of the last ``vit_last_blocks`` blocks, each through
    the final norm, concatenated, plus the mean of the last block's patch tokens with ``vit_avgpool``
    (DINO's linear-probe feature; with one block and no avgpool it is the backbone's own output).
    """

    def __init__(self, backbone: nn.Module, family: str, backbone_dim: int, vit_last_blocks: int = 1,
                 vit_avgpool: bool = False):
        super().__init__()
        self.backbone, self.family = backbone, family
        self.vit_last_blocks, self.vit_avgpool = vit_last_blocks, vit_avgpool
        if family == "vit" and vit_last_blocks > len(backbone.blocks):
            raise ValueError(f"features.vit_last_blocks={vit_last_blocks}, but the ViT has {len(backbone.blocks)} "
                             f"blocks")
        self.feature_dim = backbone_dim * (vit_last_blocks + int(vit_avgpool)) if family == "vit" else backbone_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.family != "vit":
            return self.backbone(images)
        vit = self.backbone
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        first_kept = len(vit.blocks) - self.vit_last_blocks
        tokens = []
        for i, block in enumerate(vit.blocks):
            x = block(x)
            if i >= first_kept:
                tokens.append(vit.norm(x))
        parts = [t[:, 0] for t in tokens]
        if self.vit_avgpool:
            parts.append(tokens[-1][:, vit.num_prefix_tokens:].mean(dim=1))
        return torch.cat(parts, dim=-1)


@torch.no_grad()
def extract_features(extractor: nn.Module, dataset: Dataset, batch_size: int, num_workers: int,
                     device: torch.device, env: DistEnv, autocast_dtype: torch.dtype | None = None,
                     progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float32) and labels of every item of ``dataset``, in dataset order, on every rank.

    ``dataset`` yields ``(image, label, index)``; the extractor runs in eval mode.
    """
    from tqdm import tqdm

    was_training = extractor.training
    extractor.eval()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), env.rank, env.world_size),
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    feats, labels, indices = [], [], []
    for images, targets, index in tqdm(loader, desc=desc, disable=not (progress and env.is_main),
                                       dynamic_ncols=True, unit="batch"):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = extractor(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(targets)
        indices.append(index)
    extractor.train(was_training)
    dim = feats[0].shape[1] if feats else 0
    if env.enabled:  # a rank with an empty shard still has to know the width for the gather
        width = torch.tensor([dim], device=collective_device())
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        dim = int(width)
    local_feats = torch.cat(feats) if feats else torch.zeros(0, dim)
    local_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    local_index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    return (gather_rows(local_feats, local_index, len(dataset), env),
            gather_rows(local_labels.long(), local_index, len(dataset), env))
