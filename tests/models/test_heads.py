import copy

import pytest
import torch
from torch import nn

from twist.models import TwistHead
from twist.models.heads import BarlowTwinsProjector


def test_nbs_gives_zero_mean_unit_variance_logits_per_class():
    torch.manual_seed(0)
    head = TwistHead(32, 64, 10).train()
    features = 5 * torch.randn(128, 32) + 3
    logits = head(features)
    assert logits.shape == (128, 10)
    torch.testing.assert_close(logits.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    # BatchNorm divides by the biased standard deviation.
    torch.testing.assert_close(logits.var(0, unbiased=False), torch.ones(10), atol=1e-3, rtol=0)


def test_nbs_is_not_affine_and_can_be_switched_off():
    head = TwistHead(8, 16, 4)
    assert isinstance(head.nbs, nn.BatchNorm1d) and not head.nbs.affine
    assert not any(name.startswith("nbs.") for name, _ in head.named_parameters())
    off = TwistHead(8, 16, 4, nbs=False).train()
    logits = off(torch.randn(64, 8))
    assert logits.mean(0).abs().max() > 1e-3  # nothing standardises them any more


@pytest.mark.parametrize("norm,cls", [("bn", nn.BatchNorm1d), ("ln", nn.LayerNorm), ("none", nn.Identity)])
@pytest.mark.parametrize("activation,act_cls", [("relu", nn.ReLU), ("gelu", nn.GELU)])
def test_head_layout(norm, cls, activation, act_cls):
    head = TwistHead(12, 20, 6, norm=norm, activation=activation, dropout=0.3)
    layers = list(head.mlp)
    assert [type(m) for m in layers] == [nn.Linear, cls, act_cls, nn.Dropout, nn.Linear, cls, act_cls]
    assert layers[0].in_features == 12 and layers[0].out_features == 20
    assert layers[4].in_features == 20 and layers[4].out_features == 20
    assert head.last_linear.out_features == 6
    assert layers[3].p == 0.3


def test_trunc_normal_init_for_vit_heads():
    torch.manual_seed(0)
    head = TwistHead(384, 2048, 4096, trunc_normal_init=True)
    weight = head.mlp[0].weight
    # Truncation is at ±2 absolute, as in DINO/timm, so the spread is that of N(0, 0.02).
    assert weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert weight.mean().abs().item() < 1e-3
    assert torch.all(head.last_linear.bias == 0)


def test_barlow_twins_projector_equals_one_call_per_view():
    """One linear call on all views with per-view batch norms gives the outputs, gradients and running
    statistics of running the projector on each view separately."""
    torch.manual_seed(0)
    joint = BarlowTwinsProjector(6, 16, 5).double()
    separate = copy.deepcopy(joint)
    views = [torch.randn(8, 6, dtype=torch.float64) * (1 + i) + i for i in range(2)]
    ours = joint(views)
    reference = [separate.mlp(view) for view in views]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (ours[0].pow(2).sum() + 3 * ours[1].sum()).backward()
    (reference[0].pow(2).sum() + 3 * reference[1].sum()).backward()
    for (name, p), q in zip(joint.named_parameters(), separate.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, buf), other in zip(joint.named_buffers(), separate.buffers()):
        torch.testing.assert_close(buf, other, rtol=0, atol=0, msg=name)
    # The per-view statistics matter: one batch norm call over both views gives other outputs.
    pooled = separate.mlp(torch.cat(views))
    assert not torch.allclose(pooled[:8], ours[0], atol=1e-3)
