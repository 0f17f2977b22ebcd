"""The two regularisers at work (the paper's Table 8): without the sharpness term the class
distributions collapse to near-uniform; with both terms a short run keeps them sharp and diverse."""
import math
import os

import pytest
import torch

from twist.config import load_config
from twist.engine.trainer import build_eval_loader, train
from twist.models import build_model

NUM_CLASSES = 8


def _trained_distributions(tmp_path, tiny_overrides, extra):
    overrides = tiny_overrides + [
        "data.num_samples=256", "data.num_classes=8", "train.batch_size=64", "train.epochs=15",
        f"model.head.num_classes={NUM_CLASSES}", "model.head.hidden_dim=64", "optim.warmup_epochs=2",
        "train.log_every=10", *extra,
    ]
    cfg = load_config(None, overrides)
    train(cfg, str(tmp_path))
    model = build_model(cfg)
    model.load_state_dict(torch.load(os.path.join(tmp_path, "checkpoint.pth"), weights_only=True)["model"])
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model([images])[0], dim=1) for images, _, _ in build_eval_loader(cfg)])
    per_sample_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean().item()
    mean = probs.mean(0)
    entropy_of_mean = -(mean * mean.clamp_min(1e-12).log()).sum().item()
    return per_sample_entropy, entropy_of_mean, probs.argmax(1).unique().numel()


def test_without_sharpness_the_outputs_collapse_to_uniform(tmp_path, tiny_overrides):
    # lam1 = -1 makes the sharpness weight (1 + lam1) zero.
    per_sample, _, _ = _trained_distributions(tmp_path, tiny_overrides, ["loss.lam1=-1.0"])
    assert per_sample > 0.95 * math.log(NUM_CLASSES)


def test_with_both_regularisers_the_outputs_stay_sharp_and_diverse(tmp_path, tiny_overrides):
    per_sample, of_mean, used = _trained_distributions(tmp_path, tiny_overrides, [])
    assert per_sample < 0.6 * math.log(NUM_CLASSES)
    assert of_mean > 0.8 * math.log(NUM_CLASSES)
    assert used >= NUM_CLASSES // 2
