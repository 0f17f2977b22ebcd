"""Optimiser step time on the TWIST model's parameters: LARS beside torch's SGD and a bare memory pass.

TWIST's projection head is large (36 M parameters at C = 4096, 160 M at the ResNet-50 recipe's
C = 32768, against the backbone's 11 M or 25 M), so the optimiser step is bound by memory traffic.
Three steps run on the same parameters with random gradients, rounds alternating:

- LARS as the trainer builds it (the weights group adapted, biases and norms excluded);
- torch.optim.SGD with momentum and weight decay, foreach: the usual non-adaptive step;
- one ``p += 0 * g`` pass over every parameter (two reads and a write): the memory floor of one pass.

    python bench/optimizer.py                                      # CPU: ResNet-18, head 4096/4096
    python bench/optimizer.py --backbone resnet50 --num-classes 32768 --device cuda
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_overhead import sync  # noqa: E402

from twist.config import load_config  # noqa: E402
from twist.engine.optim import OptimConfig, build_optimizer, split_decay_groups  # noqa: E402
from twist.engine.runtime import describe_hardware, resolve_device  # noqa: E402
from twist.methods import build_method  # noqa: E402
from twist.models import BackboneConfig, build_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--hidden-dim", type=int, default=4096)
    p.add_argument("--num-classes", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per round and optimiser")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(None, [f"model.backbone={args.backbone}", "data.dataset=synthetic",
                             f"model.head.hidden_dim={args.hidden_dim}",
                             f"model.head.num_classes={args.num_classes}", f"device={args.device}"])
    device = resolve_device(cfg["device"])
    torch.manual_seed(0)
    model = build_model(BackboneConfig.from_config(cfg), build_method(cfg)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    lars = build_optimizer(model, OptimConfig.from_config(cfg))
    for group in lars.param_groups:
        group["lr"], group["weight_decay"] = 0.3, 1e-6 if group["weight_decay"] else 0.0
    weights, no_decay = split_decay_groups(model)
    sgd = torch.optim.SGD([{"params": weights, "weight_decay": 1e-6}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.3, momentum=0.9, foreach=True)
    grads = [p.grad for p in params]

    @torch.no_grad()
    def one_pass():
        torch._foreach_add_(params, grads, alpha=0.0)

    contenders = {"LARS (twist.engine.optim)": lars.step, "SGD momentum+wd, foreach": sgd.step,
                  "one pass p += 0*g": one_pass}

    def timed(fn):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / args.steps

    for fn in contenders.values():  # warm-up; the first step also creates the momentum buffers
        timed(fn)
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}

    n = sum(p.numel() for p in params)
    print(f"hardware: {describe_hardware(device)}")
    print(f"setting:  {args.backbone} + head {args.hidden_dim}/{args.num_classes}: {n / 1e6:.1f} M parameters "
          f"in {len(params)} tensors, float32")
    print(f"{'step':<30}{'ms':>10}{'x one pass':>12}")
    floor = median["one pass p += 0*g"]
    for name, t in median.items():
        print(f"{name:<30}{t * 1e3:>10.1f}{t / floor:>12.2f}")
    print(f"ratio LARS / SGD: {median['LARS (twist.engine.optim)'] / median['SGD momentum+wd, foreach']:.3f}  "
          f"(median of {args.rounds} rounds of {args.steps} steps)")


if __name__ == "__main__":
    main()
