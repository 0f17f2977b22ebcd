"""The online probe's figures against a float64 formula: a linear layer from the same initial weights,
trained by SGD (momentum, weight decay) on the same detached features, scored on each batch before
its update. What the probe reports is exactly that linear fit's accuracy and loss."""
import numpy as np
import torch
from torch import nn

from twist.config import DEFAULTS
from twist.distributed import DistEnv
from twist.engine.monitors import MonitorConfig, OnlineProbe


def _reference(weight, bias, batches, lr, momentum, decay):
    w, b = weight.double().clone(), bias.double().clone()
    bw, bb = torch.zeros_like(w), torch.zeros_like(b)
    correct, loss_sum, images = 0, 0.0, 0
    for step, (x, y) in enumerate(batches):
        x = x.double()
        logits = x @ w.T + b
        p = torch.softmax(logits, dim=1)
        loss = -torch.log(p[torch.arange(len(y)), y]).mean()
        correct += int((logits.argmax(dim=1) == y).sum())
        loss_sum += float(loss) * len(y)
        images += len(y)
        grad_logits = (p - nn.functional.one_hot(y, w.shape[0]).double()) / len(y)
        gw, gb = grad_logits.T @ x + decay * w, grad_logits.sum(0) + decay * b
        bw, bb = (gw, gb) if step == 0 else (momentum * bw + gw, momentum * bb + gb)
        w, b = w - lr * bw, b - lr * bb
    return correct / images, loss_sum / images


def test_the_probe_reports_the_accuracy_of_sgd_on_the_features_it_saw():
    monitor = MonitorConfig(**{**DEFAULTS["monitor"], "probe_lr": 0.5, "probe_momentum": 0.9,
                               "probe_weight_decay": 1e-3})
    backbone = nn.Identity()  # the hook sees exactly the features given
    probe = OnlineProbe(monitor, 3, backbone, feature_dim=6, num_classes=3, device=torch.device("cpu"),
                        env=DistEnv())
    weight, bias = probe.linear.weight.detach().clone(), probe.linear.bias.detach().clone()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 2
    batches = []
    for _ in range(12):
        y = torch.from_numpy(rng.integers(0, 3, size=16))
        x = torch.from_numpy(centres[y.numpy()] + rng.normal(size=(16, 6))).float()
        batches.append((x, y))
        probe.expect_features(len(y))
        backbone(torch.cat([x, x + 100]))  # the first rows are the first view's; the rest are ignored
        probe.step(y)
    record = probe.record(step=12, epoch=0)
    top1, loss = _reference(weight, bias, batches, 0.5, 0.9, 1e-3)
    assert record["images"] == 12 * 16
    assert record["probe_top1"] == top1 and 0.5 < top1 < 1.0  # it learns, and is scored before each update
    assert abs(record["probe_loss"] - loss) < 1e-5
    probe.close()
