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
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=_attempt_store(env),
                                rank=env.rank, world_size=env.world_size)
    return env


def _attempt_store(env: DistEnv) -> dist.Store:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, with keys private to this restart attempt.

    After torchrun restarts a failed group, the store can still hold the dead workers' addresses;
    without a per-attempt prefix a new rank may connect to one of them and the restart fails.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, env.world_size, is_master=env.rank == 0 and not agent_hosts_store,
                          multi_tenant=not agent_hosts_store)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"twist/attempt_{attempt}/", store)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable mean over all ranks.

    Each rank's loss uses the same mean, and DDP averages the parameter gradients, so the result is
    exactly the gradient of the objective on the concatenated global batch.
    """
    size = world_size()
    return tensor if size == 1 else _AllReduceSum.apply(tensor, None) / size


class _AllGatherCat(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order; the gradient of each rank's rows is the sum over
    ranks of the upstream gradients of those rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every rank's ``tensor`` (equal shapes) in rank order.

    Every rank then computes the same loss of the global batch; with DDP averaging the gradients,
    the result is that loss's exact gradient.
    """
    return tensor if world_size() == 1 else _AllGatherCat.apply(tensor)


def reduce_for_logging(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a vector of logged statistics, in one collective, without gradient."""
    size = world_size()
    if size == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / size


def check_bunch(ranks_per_bunch: int) -> None:
    size = world_size()
    if ranks_per_bunch < 1 or size % ranks_per_bunch:
        raise ValueError(f"the world size ({size}) must be a multiple of the ranks per NBS bunch ({ranks_per_bunch})")


def bunch_sum(tensor: torch.Tensor, ranks_per_bunch: int) -> torch.Tensor:
    """Differentiable sum over this rank's bunch of ``ranks_per_bunch`` consecutive ranks.

    Done as one all-reduce over all ranks of a (bunches x n) tensor in which each rank fills its
    bunch's row, not with ``new_group`` subgroups: those cannot be re-created after an elastic
    restart (their store keys outlive the dead workers), and the statistics are small.
    """
    size = world_size()
    if size == 1 or ranks_per_bunch == 1:
        return tensor
    if ranks_per_bunch == size:
        return _AllReduceSum.apply(tensor, None)
    bunch = dist.get_rank() // ranks_per_bunch
    rows = torch.zeros(size // ranks_per_bunch, *tensor.shape, dtype=tensor.dtype, device=tensor.device)
    rows = rows.index_put((torch.tensor([bunch], device=tensor.device),), tensor.unsqueeze(0))
    return _AllReduceSum.apply(rows, None)[bunch]


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the rows of ``ranks_per_bunch`` consecutive ranks, on any device and backend.

    ``nn.SyncBatchNorm`` needs CUDA; this one reduces the per-channel count, sum and sum of squares
    in one differentiable collective, so it runs on gloo too and its gradient is that of a batch norm
    over the bunch's concatenated batch. With ``ranks_per_bunch=1`` it is an ordinary batch norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, ranks_per_bunch: int = 1, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.ranks_per_bunch = ranks_per_bunch

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ranks_per_bunch == 1 or world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in >= float32
        local_count = torch.tensor([x32.numel() / x32.shape[1]], device=x.device, dtype=x32.dtype)
        stats = torch.cat([local_count, x32.sum(dims), (x32 * x32).sum(dims)])
        stats = bunch_sum(stats, self.ranks_per_bunch)
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


def synchronise_batch_norms(module: nn.Module, ranks_per_bunch: int, device_type: str) -> nn.Module:
    """Replace every batch norm in ``module`` with one whose statistics span ``ranks_per_bunch`` ranks.

    Over all ranks on CUDA this is ``nn.SyncBatchNorm``; otherwise (CPU/gloo, where that one does
    not run, or a bunch smaller than the world) it is :class:`SyncedBatchNorm`. Weights and buffers
    are kept.
    """
    if world_size() == 1 or ranks_per_bunch == 1:
        return module
    check_bunch(ranks_per_bunch)
    if device_type == "cuda" and ranks_per_bunch == world_size():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncedBatchNorm):
            reference = next(iter(child.state_dict().values()))
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, ranks_per_bunch, device=reference.device,
                                     dtype=reference.dtype)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            synchronise_batch_norms(child, ranks_per_bunch, device_type)
    return module
