"""Process groups, differentiable collectives and a batch norm whose statistics span several ranks.

One initialisation path serves a plain process, ``torchrun`` (one node or many, c10d rendezvous) and
SLURM. Everything here degrades to single-process behaviour when no process group exists, so the
same model and loss code runs everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _launcher_env() -> DistEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or any launcher that sets the env:// variables
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:  # srun with one task per GPU
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise RuntimeError("SLURM launch: set MASTER_ADDR (the first node of the job) and MASTER_PORT; "
                               "tools/submit_slurm.py does this for you")
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv()


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group the launcher describes (NCCL on GPU, gloo on CPU), or run alone."""
    env = _launcher_env()
    if not env.enabled:
        return env
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method="env://",
                                rank=env.rank, world_size=env.world_size)
    return env


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_STATS_GROUP = None


def stats_group():
    """A group of all ranks reserved for the loss and batch-norm statistics.

    DDP reduces gradient buckets asynchronously while backward runs; the collectives inside our
    backward passes go through this separate group so that the two streams of collectives can never
    be paired up in a different order on different ranks. Created on first use (collectively).
    """
    global _STATS_GROUP
    if _STATS_GROUP is None and world_size() > 1:
        _STATS_GROUP = dist.new_group(list(range(world_size())))
    return _STATS_GROUP


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; the gradient of every input is the sum of the upstream gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Differentiable sum over ``group`` (all ranks by default); the identity without a process group."""
    if world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable mean over all ranks.

    Each rank's loss uses the same mean, and DDP averages the parameter gradients, so the result is
    exactly the gradient of the objective on the concatenated global batch.
    """
    size = world_size()
    return tensor if size == 1 else _AllReduceSum.apply(tensor, stats_group()) / size


def reduce_for_logging(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a vector of logged statistics, in one collective, without gradient."""
    size = world_size()
    if size == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values, group=stats_group())
    return values / size


def bunch_group(bunch_ranks: int):
    """The process group of this rank's bunch: ``bunch_ranks`` consecutive ranks share NBS statistics.

    Every rank must create every group (``new_group`` is collective), so all of them are built and
    this rank's is returned. ``None`` means a bunch of one rank (no synchronisation).
    """
    size = world_size()
    if bunch_ranks <= 1 or size == 1:
        return None
    if size % bunch_ranks:
        raise ValueError(f"the world size ({size}) must be a multiple of the ranks per NBS bunch ({bunch_ranks})")
    if bunch_ranks == size:
        return stats_group()
    rank, mine = dist.get_rank(), None
    for start in range(0, size, bunch_ranks):
        group = dist.new_group(list(range(start, start + bunch_ranks)))
        if start <= rank < start + bunch_ranks:
            mine = group
    return mine


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the rows of every rank in ``group``, on any device and backend.

    ``nn.SyncBatchNorm`` needs CUDA; this one reduces the per-channel count, sum and sum of squares
    in one differentiable all-reduce, so it runs on gloo too and its gradient is that of a batch norm
    over the concatenated batch. Without a group it is an ordinary batch norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in >= float32
        local_count = torch.tensor([x32.numel() / x32.shape[1]], device=x.device, dtype=x32.dtype)
        stats = torch.cat([local_count, x32.sum(dims), (x32 * x32).sum(dims)])
        stats = all_reduce_sum(stats, self.group)
        count, total, total_sq = stats[0], stats[1:1 + self.num_features], stats[1 + self.num_features:]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        out = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def synchronise_batch_norms(module: nn.Module, group, device_type: str) -> nn.Module:
    """Replace every batch norm in ``module`` with one that spans ``group``.

    On CUDA this is ``nn.SyncBatchNorm``; on CPU (gloo), where that one does not run, it is
    :class:`SyncedBatchNorm`. Weights and buffers are kept.
    """
    if group is None:
        return module
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=group)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncedBatchNorm):
            reference = next(iter(child.state_dict().values()))
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, group, device=reference.device,
                                     dtype=reference.dtype)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            synchronise_batch_norms(child, group, device_type)
    return module
