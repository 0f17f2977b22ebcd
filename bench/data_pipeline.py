"""Augmentation throughput per worker core, and the workers it takes to feed a training step.

Each worker of the training DataLoader decodes a JPEG and runs the view pipeline of the config on
it (the shipped ImageNet recipes: two 224-px views, or 2 x 224 + L x 96 multi-crop). This script
times exactly that work, the dataset's __getitem__ path (decode, convert, the config's transform,
per-sample seeding), on one core, side by side for both pipelines. Images are ImageNet-sized JPEGs
made in memory (smooth random fields, so they compress and decode like photographs, not like noise).

Workers needed = the step's images/s / one worker's images/s. The step rate is measured here for the
CPU setting (the bench/step_overhead.py model), or given with --step-rate (e.g. a GPU's measured
figure); the script says which is the bottleneck.

    python bench/data_pipeline.py
    python bench/data_pipeline.py --step-rate 1200 --local-crops 6
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from twist.config import load_config
from twist.data.datasets import sample_seed
from twist.data.transforms import build_train_transform
from twist.engine.runtime import describe_hardware


def imagenet_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """JPEGs of 500 x 375 (the median ImageNet size) holding low-frequency colour fields."""
    rng = np.random.default_rng(seed)
    files = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def pipeline_rate(cfg, files: list[bytes], rounds: int) -> float:
    """Images/s of decode + the config's view pipeline on one thread (median over rounds)."""
    transform = build_train_transform(cfg)
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for index, data in enumerate(files):
            torch.manual_seed(sample_seed(cfg["seed"], r, index))
            with Image.open(io.BytesIO(data)) as img:
                transform(img.convert("RGB"))
        rates.append(len(files) / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pretrain/resnet50_2view.yaml",
                   help="the two-view recipe; the multi-crop one adds --local-crops local views to it")
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-rate", type=float, nargs=2, metavar=("TWO_VIEW", "MULTI_CROP"),
                   help="the training step's images/s for the two settings (e.g. measured on a GPU); "
                        "default: not given, only the per-core rates are printed")
    args = p.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    files = imagenet_like_jpegs(args.images)
    two_view = load_config(args.config, ["data.dataset=synthetic"])
    multi_crop = load_config(args.config, ["data.dataset=synthetic", f"augment.local_crops={args.local_crops}"])
    settings = [("two views, 2 x 224", two_view),
                (f"multi-crop, 2 x 224 + {args.local_crops} x 96", multi_crop)]
    rates = [pipeline_rate(cfg, files, args.rounds) for _, cfg in settings]

    print(f"hardware: {describe_hardware()} (one thread = one worker); {args.images} JPEGs of 500 x 375")
    print(f"{'pipeline':<36}{'images/s per core':>18}{'ms per image':>14}")
    for (name, _), rate in zip(settings, rates):
        print(f"{name:<36}{rate:>18.1f}{1000 / rate:>14.2f}")
    print(f"multi-crop / two-view cost: {rates[0] / rates[1]:.2f}x")
    if args.step_rate:
        for (name, _), rate, step in zip(settings, rates, args.step_rate):
            workers = int(np.ceil(step / rate))
            print(f"{name}: a step at {step:.0f} images/s needs {workers} worker cores "
                  f"({step / rate:.1f}); with fewer, the data pipeline is the bottleneck")


if __name__ == "__main__":
    main()
