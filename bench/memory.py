"""Memory per image of the training step, for two views and for multi-crop, beside the bare backbone.

Each measurement runs in a fresh process: build the step (model, LARS, pre-made views, exactly as
bench/step_overhead.py does) and run three steps. Memory per image is the difference of the figures
at two batch sizes divided by the difference of the batches, so what is fixed (weights, optimiser
state, the libraries) cancels and what grows with the batch remains.

- GPU: the peak of torch.cuda.max_memory_allocated, the figure that decides the largest batch.
- CPU: the bytes of the distinct tensors autograd saves for the backward pass during the step's
  forward (saved_tensors_hooks), i.e. the activation memory. The process's peak resident set is
  not used: the allocator's caching and which phase sets the peak (backward, or the optimiser's
  temporaries at small batches) make its differences meaningless.

    python bench/memory.py                       # CPU: ResNet-18, 64 px (+ 6 x 32 px multi-crop)
    python bench/memory.py --backbone resnet50 --image-size 224 --local-size 96 --precision bf16 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_overhead import make_steps, parse_args  # noqa: E402

from twist.engine.runtime import describe_hardware, resolve_device  # noqa: E402


def child(argv: list[str], which: str) -> None:
    args = parse_args(argv)
    steps, device = make_steps(args, which=(which,))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        for i in range(3):
            steps[which](i)
        torch.cuda.synchronize(device)
        print(json.dumps({"bytes": torch.cuda.max_memory_allocated(device)}))
        return
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()  # a storage saved twice counts once
        return tensor

    for i in range(3):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            steps[which](i)
    print(json.dumps({"bytes": sum(saved.values())}))


def measure(common: list[str], which: str, batch: int) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", which, *common, "--batch-size", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[3:], sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--hidden-dim", type=int, default=4096)
    p.add_argument("--num-classes", type=int, default=4096)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", type=int, nargs=2, default=[32, 96], metavar=("SMALL", "LARGE"))
    args = p.parse_args()
    common = ["--backbone", args.backbone, "--image-size", str(args.image_size), "--hidden-dim", str(args.hidden_dim),
              "--num-classes", str(args.num_classes), "--precision", args.precision, "--device", args.device,
              "--local-size", str(args.local_size)]
    small, large = args.batches
    print(f"hardware: {describe_hardware(resolve_device(args.device))}")
    device = resolve_device(args.device)
    what = "peak allocated" if device.type == "cuda" else "saved activations"
    print(f"setting:  {args.backbone}, head {args.hidden_dim}/{args.num_classes}, {args.precision}; {what}; "
          f"per image = (figure at batch {large} - figure at batch {small}) / {large - small}")
    print(f"{'views per image':<34}{'bare MiB/img':>14}{'TWIST MiB/img':>15}{'ratio':>8}"
          f"{'TWIST MiB @' + str(large):>16}")
    for name, crops in [(f"2 x {args.image_size} px", 0),
                        (f"2 x {args.image_size} + {args.local_crops} x {args.local_size} px", args.local_crops)]:
        setting = common + ["--local-crops", str(crops)]
        per_image = {}
        for which in ("bare", "twist"):
            low, high = measure(setting, which, small), measure(setting, which, large)
            per_image[which] = (high - low) / (large - small) / 2**20
            peak = high / 2**20
        print(f"{name:<34}{per_image['bare']:>14.2f}{per_image['twist']:>15.2f}"
              f"{per_image['twist'] / per_image['bare']:>8.2f}{peak:>16.0f}")


if __name__ == "__main__":
    main()
