"""Optimisers, parameter groups and the per-iteration schedules of learning rate and weight decay."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from twist.methods.twist import SelfLabelConfig
from twist.models.teacher import TeacherConfig
from twist.sections import read_section

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


@dataclass(frozen=True)
class OptimConfig:
    """``optim``: the optimiser and its rule, the peak learning rate and its curve, the weight decay and its
    curve, which parameters it spares, and the gradient clipping."""

    name: str
    lr: float
    bias_lr_ratio: float
    warmup_epochs: int
    final_lr_ratio: float
    weight_decay: float
    weight_decay_end: float
    exclude_bias_and_norm: bool
    momentum: float
    lars_eta: float
    lars_rule: str
    clip_grad_norm: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> OptimConfig:
        return read_section(cls, cfg["optim"])


@dataclass(frozen=True)
class ScheduleConfig:
    """What the per-step schedules read: the run's length (``train.epochs``), ``optim``'s curves, the
    self-labeling stage's learning-rate restart and kept fraction, and the EMA teacher's momentum."""

    epochs: int
    optim: OptimConfig
    self_label: SelfLabelConfig
    teacher: TeacherConfig

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ScheduleConfig:
        return cls(cfg["train"]["epochs"], OptimConfig.from_config(cfg),
                   read_section(SelfLabelConfig, cfg["self_label"]), TeacherConfig.from_config(cfg))


class _LayerwiseSGD(torch.optim.Optimizer):
    """What both LARS rules share: the hyper-parameters, and a step that gathers each group's parameters
    with gradients and their momentum buffers, then hands them to the rule's ``_update``."""

    def __init__(self, params: Iterable, lr: float = 0.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, lars_exclude: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                buffers = _momentum_buffers(self.state, params)
                torch._foreach_mul_(buffers, group["momentum"])
                self._update(group, params, [p.grad for p in params], buffers)
        return loss

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                buffers: list[torch.Tensor]) -> None:
        raise NotImplementedError


class LARS(_LayerwiseSGD):
    """LARS with the trust ratio inside the learning rate and momentum applied after it.

    Per parameter p with gradient g, weight decay wd and trust coefficient eta:

        ratio = eta * |p| / (|g| + wd * |p|)      (1 where |p| or |g| is zero, or if the group sets lars_exclude)
        u     = (g + wd * p) * ratio * lr
        buf   = momentum * buf + u ;  p -= buf

    Norms are computed for all parameters of a group at once and nothing is read back to the host,
    so a step never waits on the device. The update is accumulated straight into the momentum
    buffer (``buf = momentum * buf + s * g + s * wd * p`` with ``s = ratio * lr``), so a step
    allocates no parameter-sized temporaries and runs six kernels over the parameters' memory: with
    TWIST's head (36 M parameters at C = 4096, 160 M at C = 32768) the optimiser is bound by memory
    traffic, and on the CPU every fresh allocation of that size also pays its page faults.
    """

    def _update(self, group, params, grads, buffers) -> None:
        wd, lr = group["weight_decay"], group["lr"]
        if group["lars_exclude"]:
            torch._foreach_add_(buffers, grads, alpha=lr)
            if wd != 0:
                torch._foreach_add_(buffers, params, alpha=lr * wd)
        else:
            param_norms = torch.stack(torch._foreach_norm(params))
            grad_norms = torch.stack(torch._foreach_norm(grads))
            ratio = group["eta"] * param_norms / (grad_norms + wd * param_norms)
            scale = torch.where((param_norms > 0) & (grad_norms > 0), ratio, 1.0) * lr
            torch._foreach_addcmul_(buffers, grads, list(scale.unbind()))
            if wd != 0:
                torch._foreach_addcmul_(buffers, params, list((scale * wd).unbind()))
        torch._foreach_sub_(params, buffers)


class BarlowTwinsLARS(_LayerwiseSGD):
    """LARS as Barlow Twins runs it: the trust ratio over the norm of the whole update, lr after momentum.

    Per parameter p with gradient g, weight decay wd and trust coefficient eta:

        d     = g + wd * p
        ratio = eta * |p| / |d|                   (1 where |p| or |d| is zero, or if the group sets lars_exclude)
        buf   = momentum * buf + ratio * d ;  p -= lr * buf

    Against :class:`LARS` (TWIST's rule) the ratio divides by |g + wd p| rather than |g| + wd |p|, and
    the learning rate multiplies the momentum buffer instead of entering it, so a change of lr acts
    on the whole accumulated velocity at once. The recipe excludes biases and norm parameters from
    weight decay and adaptation (``exclude_bias_and_norm``: that group gets wd 0 and lars_exclude).

    As in :class:`LARS`, nothing parameter-sized is allocated: |d|² = |g|² + 2 wd <g, p> + wd² |p|²
    from two norms and one dot product per parameter (no cancellation in practice: a weight that a
    norm layer follows has <g, p> = 0, and wd is ~1e-6), and d is accumulated straight into the buffer.
    The dot product reads g and p once more than TWIST's rule: 116 ms a step against 94 ms on one CPU
    thread for ResNet-18 + a 4096/4096 head (47 M parameters); 477 ms written with temporaries.
    """

    def _update(self, group, params, grads, buffers) -> None:
        wd = group["weight_decay"]
        if group["lars_exclude"]:
            torch._foreach_add_(buffers, grads)
            if wd != 0:
                torch._foreach_add_(buffers, params, alpha=wd)
        else:
            ratio = _trust_ratio_of_update(params, grads, wd, group["eta"])
            torch._foreach_addcmul_(buffers, grads, list(ratio.unbind()))
            if wd != 0:
                torch._foreach_addcmul_(buffers, params, list((ratio * wd).unbind()))
        torch._foreach_add_(params, buffers, alpha=-group["lr"])


def _trust_ratio_of_update(params: list[torch.Tensor], grads: list[torch.Tensor], wd: float,
                           eta: float) -> torch.Tensor:
    """eta |p| / |g + wd p| per parameter (1 where either norm is zero), without forming g + wd p."""
    param_norms = torch.stack(torch._foreach_norm(params))
    grad_norms = torch.stack(torch._foreach_norm(grads))
    if wd == 0:
        update_norms = grad_norms
    else:
        dots = torch.stack([torch.dot(*_flat_views(g, p)) for g, p in zip(grads, params)])
        squared = grad_norms.square() + 2 * wd * dots + wd * wd * param_norms.square()
        update_norms = squared.clamp_min(0).sqrt()
    return torch.where((param_norms > 0) & (update_norms > 0), eta * param_norms / update_norms, 1.0)


def _flat_views(grad: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as 1-D, elements paired, in the parameter's memory order: views, not copies, when
    the two share a layout (a channels-last weight and its gradient included)."""
    order = sorted(range(param.ndim), key=lambda dim: param.stride(dim), reverse=True)
    return grad.permute(order).reshape(-1), param.permute(order).reshape(-1)


def _momentum_buffers(state: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's momentum buffer, created as zeros in the parameter's layout on its first step."""
    buffers = []
    for p in params:
        if "momentum_buffer" not in state[p]:
            state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buffers.append(state[p]["momentum_buffer"])
    return buffers


def split_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases-and-norms): 1-D tensors, biases and position/class tokens go to the second."""
    weights, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(n in name for n in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            weights.append(param)
    return weights, no_decay


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Group 0 holds the weights (scheduled wd, LARS adaptation); group 1 biases and norms.

    With ``exclude_bias_and_norm`` group 1 gets no weight decay and no LARS adaptation. Learning
    rates and weight decay are written into the groups every iteration by the trainer.
    """
    weights, no_decay = split_decay_groups(model)
    exclude = optim.exclude_bias_and_norm
    groups = [
        {"params": weights, "weight_decay": optim.weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0 if exclude else optim.weight_decay, "lars_exclude": exclude},
    ]
    if optim.name == "lars":
        rule = BarlowTwinsLARS if optim.lars_rule == "barlow_twins" else LARS
        return rule(groups, momentum=optim.momentum, eta=optim.lars_eta)
    for group in groups:
        del group["lars_exclude"]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=optim.momentum)
    if optim.name == "adam":  # weight decay added to the gradient (W-MSE's recipe)
        return torch.optim.Adam(groups, lr=0.0)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0)
    raise ValueError(f"optim.name must be lars, sgd, adam or adamw; got '{optim.name}'")


def cosine_schedule(start: float, end: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warmup from ``warmup_start`` to ``start``, then a half cosine from ``start`` to ``end``."""
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    steps = np.arange(total_steps - warmup_steps)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(math.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, cosine])


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: base learning rates are quoted for a global batch of 256."""
    return base_lr * global_batch / 256


def build_schedules(section: ScheduleConfig, steps_per_epoch: int, global_batch: int) -> dict[str, np.ndarray]:
    """Every per-iteration value of the run, indexed by the global step.

    - ``lr``: warmup from 0 to the scaled peak, cosine to ``final_lr_ratio`` x peak. With
      self-labeling that curve ends at its start epoch, and the stage restarts with its own warmup
      to the scaled ``self_label.lr``, then cosine.
    - ``weight_decay``: cosine from start to end over the whole run.
    - ``quantile``: the self-labeling kept fraction, cosine over the stage (NaN before it).
    - ``momentum``: the EMA teacher's momentum, cosine over the whole run.
    """
    optim, sl, teacher = section.optim, section.self_label, section.teacher
    total = section.epochs * steps_per_epoch
    ratio = optim.final_lr_ratio
    twist_steps = sl.start_epoch * steps_per_epoch if sl.enabled else total
    peak = scaled_lr(optim.lr, global_batch)
    lr = cosine_schedule(peak, peak * ratio, twist_steps, min(optim.warmup_epochs * steps_per_epoch, twist_steps))
    quantile = np.full(total, np.nan)
    if sl.enabled:
        sl_steps = total - twist_steps
        sl_peak = scaled_lr(sl.lr, global_batch)
        sl_warmup = min(sl.warmup_epochs * steps_per_epoch, sl_steps)
        lr = np.concatenate([lr, cosine_schedule(sl_peak, sl_peak * ratio, sl_steps, sl_warmup)])
        quantile[twist_steps:] = cosine_schedule(sl.quantile, sl.quantile_end, sl_steps)
    return {
        "lr": lr,
        "weight_decay": cosine_schedule(optim.weight_decay, optim.weight_decay_end, total),
        "quantile": quantile,
        "momentum": momentum_schedule(teacher.momentum_start, teacher.momentum_end, total),
    }


def momentum_schedule(start: float, end: float, total_steps: int) -> np.ndarray:
    """Cosine from ``start`` at step 0 to exactly ``end`` at the last step.

    Defined over the whole run: the reference's covers only the TWIST stage and is indexed past its
    end once self-labeling starts.
    """
    if total_steps == 1:
        return np.array([start])
    steps = np.arange(total_steps)
    return end + 0.5 * (start - end) * (1 + np.cos(math.pi * steps / (total_steps - 1)))


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: dict[str, np.ndarray], step: int,
                    bias_lr_ratio: float) -> None:
    weights, no_decay = optimizer.param_groups
    weights["lr"] = float(schedules["lr"][step])
    no_decay["lr"] = float(schedules["lr"][step]) * bias_lr_ratio
    weights["weight_decay"] = float(schedules["weight_decay"][step])
