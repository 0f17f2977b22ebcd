"""W-MSE: a two-layer head, whitening over sub-batches of the global batch, and the MSE of positives."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twist.config_error import ConfigError
from twist.distributed import all_gather_cat
from twist.losses import WMSELoss
from twist.methods.base import Method
from twist.models.heads import WMSEHead
from twist.sections import read_section


@dataclass(frozen=True)
class WMSEConfig:
    """``wmse``: head Linear → BN → ReLU → Linear; Cholesky whitening over sub-batches of w_size rows of
    the global batch, w_iter times; num_samples positives per image, every pair compared."""

    hidden_dim: int = 1024
    out_dim: int = 128
    w_size: int = 256
    w_iter: int = 1
    w_eps: float = 0.0
    num_samples: int = 2
    normalize: bool = True


class WMSE(Method):
    name = "wmse"
    sections = {"wmse": WMSEConfig}
    ranges = {"wmse.hidden_dim": (1, None), "wmse.out_dim": (1, None), "wmse.w_size": (2, None),
              "wmse.w_iter": (1, None), "wmse.w_eps": (0.0, 1.0), "wmse.num_samples": (2, 8)}

    def __init__(self, section: WMSEConfig, seed: int):
        self.section, self.seed = section, seed
        self.criterion = WMSELoss(section.w_size, section.w_iter, section.w_eps, section.normalize,
                                  gather=all_gather_cat)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> WMSE:
        return cls(read_section(WMSEConfig, cfg["wmse"]), cfg["seed"])

    @classmethod
    def check_config(cls, cfg: dict[str, Any], source: str) -> None:
        super().check_config(cfg, source)
        wm = cfg["wmse"]
        if wm["w_size"] <= wm["out_dim"]:
            raise ConfigError(f"{source}: 'wmse.w_size' ({wm['w_size']}) must exceed 'wmse.out_dim' "
                              f"({wm['out_dim']}): the covariance of fewer rows than dimensions is singular and "
                              f"cannot be whitened")

    @classmethod
    def _batch_rule(cls) -> str:
        return " (and W-MSE a multiple of wmse.w_size)"

    def global_views(self) -> int:
        return self.section.num_samples

    def build_head(self, feature_dim: int, backbone_family: str) -> nn.Module:
        return WMSEHead(feature_dim, self.section.hidden_dim, self.section.out_dim)

    def check_batch(self, batch_size: int, world_size: int) -> None:
        global_batch = batch_size * world_size
        if global_batch % self.section.w_size:
            raise ConfigError(f"the global batch ({batch_size} x {world_size} processes = {global_batch}) must be "
                              f"a multiple of wmse.w_size ({self.section.w_size})")

    def loss(self, outputs: list[torch.Tensor], step: int, indices: torch.Tensor,
             teacher_outputs: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        # The sub-batches are drawn from (seed, step): the same on every rank, and again after a resume.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.criterion(outputs, generator, keys=indices)
