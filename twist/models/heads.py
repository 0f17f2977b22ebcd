"""The TWIST projection head: an MLP whose logits pass a non-affine batch norm ("NBS") before the softmax."""
from __future__ import annotations

import torch
from torch import nn


def _hidden_norm(kind: str, width: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(width)
    if kind == "ln":
        return nn.LayerNorm(width, eps=1e-6)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"head norm must be bn, ln or none; got '{kind}'")


def _activation(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"head activation must be relu or gelu; got '{kind}'")


class TwistHead(nn.Module):
    """Linear → norm → act → dropout → Linear → norm → act → Linear(C) → NBS.

    NBS standardises every class logit over the batch (zero mean, unit variance, no learned scale or
    shift). Without it the class distributions collapse far more easily; it can be switched off to
    reproduce that ablation.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, norm: str = "bn",
                 activation: str = "relu", dropout: float = 0.0, nbs: bool = True,
                 trunc_normal_init: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), _hidden_norm(norm, hidden_dim), _activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), _hidden_norm(norm, hidden_dim), _activation(activation),
        )
        self.last_linear = nn.Linear(hidden_dim, num_classes)
        self.nbs = nn.BatchNorm1d(num_classes, affine=False) if nbs else nn.Identity()
        if trunc_normal_init:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.nbs(self.last_linear(self.mlp(features)))


class BarlowTwinsProjector(nn.Module):
    """Barlow Twins' projector: Linear → BN → ReLU → Linear → BN → ReLU → Linear, no biases.

    It takes the list of the views' features and returns one embedding per view. Each batch norm
    normalises each view with that view's statistics, as separate calls per view would, but every
    linear layer runs once on all views: its 67 M-parameter weight gets one gradient instead of a
    sum of per-view ones (two fewer passes over it, and no fresh weight-sized tensors), and its
    products run on twice the rows. The loss standardises each view's output itself (its non-affine
    batch norm), so the projector ends with the last linear layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [view.shape[0] for view in views]
        x = torch.cat(views)
        for layer in self.mlp:
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm included
                x = torch.cat([layer(part) for part in x.split(sizes)])
            else:
                x = layer(x)
        return list(x.split(sizes))


class WMSEHead(nn.Module):
    """W-MSE's head: Linear → BN → ReLU → Linear to the embedding that is whitened."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)
