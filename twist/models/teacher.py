"""The exponential-moving-average teacher of the ViT recipes.

After every optimiser step: teacher <- m * teacher + (1 - m) * student, over parameters only. The
teacher keeps its own normalisation buffers: like the reference it runs in train mode, so its batch
norms (head and NBS) use the statistics of the batch it sees. Unlike the reference it has no
stochastic depth (DINO's choice): its targets should not be randomly thinned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twist.sections import read_section


@dataclass(frozen=True)
class TeacherConfig:
    """``teacher``: whether an EMA teacher gives the targets, and its momentum from the first step to the last."""

    enabled: bool
    momentum_start: float
    momentum_end: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TeacherConfig:
        return read_section(cls, cfg["teacher"])


def disable_stochastic_depth(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0


class EMATeacher(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        teacher.load_state_dict(student.state_dict())
        disable_stochastic_depth(teacher)
        for param in teacher.parameters():
            param.requires_grad_(False)
        self.model = teacher

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        teacher_params = list(self.model.parameters())
        student_params = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)

    @torch.no_grad()
    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.model(views)
