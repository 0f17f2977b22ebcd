"""Optimisers, parameter groups and the per-iteration schedules of learning rate and weight decay."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


class LARS(torch.optim.Optimizer):
    """LARS with the trust ratio inside the learning rate and momentum applied after it.

    Per parameter p with gradient g, weight decay wd and trust coefficient eta:

        ratio = eta * |p| / (|g| + wd * |p|)      (1 where |p| or |g| is zero, or if the group sets lars_exclude)
        u     = (g + wd * p) * ratio * lr
        buf   = momentum * buf + u ;  p -= buf

    Norms are computed for all parameters of a group at once and nothing is read back to the host,
    so a step never waits on the device.
    """

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
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr, momentum = group["weight_decay"], group["lr"], group["momentum"]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            else:
                grads = [g.clone() for g in grads]
            if not group["lars_exclude"]:
                param_norms = torch._foreach_norm(params)
                grad_norms = torch._foreach_norm([p.grad for p in params])
                for update, p_norm, g_norm in zip(grads, param_norms, grad_norms):
                    ratio = group["eta"] * p_norm / (g_norm + wd * p_norm)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                    update.mul_(ratio)
            torch._foreach_mul_(grads, lr)
            for p, update in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(momentum).add_(update)
                p.sub_(state["momentum_buffer"])
        return loss


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


def build_optimizer(model: nn.Module, optim_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Group 0 holds the weights (scheduled wd, LARS adaptation); group 1 biases and norms.

    With ``exclude_bias_and_norm`` group 1 gets no weight decay and no LARS adaptation. Learning
    rates and weight decay are written into the groups every iteration by the trainer.
    """
    weights, no_decay = split_decay_groups(model)
    exclude = optim_cfg["exclude_bias_and_norm"]
    groups = [
        {"params": weights, "weight_decay": optim_cfg["weight_decay"], "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0 if exclude else optim_cfg["weight_decay"], "lars_exclude": exclude},
    ]
    name = optim_cfg["name"]
    if name == "lars":
        return LARS(groups, momentum=optim_cfg["momentum"], eta=optim_cfg["lars_eta"])
    for group in groups:
        del group["lars_exclude"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=optim_cfg["momentum"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0)
    raise ValueError(f"optim.name must be lars, sgd or adamw; got '{name}'")


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


def build_schedules(optim_cfg: dict[str, Any], epochs: int, steps_per_epoch: int,
                    global_batch: int) -> dict[str, np.ndarray]:
    """Per-iteration learning rate and weight decay for the whole run (index = global step)."""
    total = epochs * steps_per_epoch
    peak = scaled_lr(optim_cfg["lr"], global_batch)
    warmup = min(optim_cfg["warmup_epochs"] * steps_per_epoch, total)
    return {
        "lr": cosine_schedule(peak, peak * optim_cfg["final_lr_ratio"], total, warmup),
        "weight_decay": cosine_schedule(optim_cfg["weight_decay"], optim_cfg["weight_decay_end"], total),
    }


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: dict[str, np.ndarray], step: int,
                    bias_lr_ratio: float) -> None:
    weights, no_decay = optimizer.param_groups
    weights["lr"] = float(schedules["lr"][step])
    no_decay["lr"] = float(schedules["lr"][step]) * bias_lr_ratio
    weights["weight_decay"] = float(schedules["weight_decay"][step])
