"""Evaluation costs, side by side in one run.

1. Cluster metrics on N samples x K classes (ImageNet val: 50,000 x 1,000): the time of each score,
   and the contingency matrix built with one bincount against the reference's K x K loop of
   reductions (timed on a slice of rows and scaled up; the full loop takes minutes).
2. Feature extraction (``twist.eval.features.extract_features``: data loader, eval mode, float32
   copy to the host, dataset-order gather) against the backbone's bare inference on the same
   pre-made tensors. Rounds alternate between the two; the median is printed.

    python bench/evaluation.py                                   # CPU: ResNet-18, 64 px, batch 256
    python bench/evaluation.py --backbone resnet50 --image-size 224 --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from twist.distributed import DistEnv
from twist.engine.runtime import autocast_dtype, describe_hardware, resolve_device
from twist.eval.features import FeatureExtractor, extract_features
from twist.eval.metrics import cluster_metrics, contingency, hungarian_accuracy, majority_accuracy
from twist.models.backbones import build_backbone


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=1_000)
    p.add_argument("--loop-rows", type=int, default=10, help="rows of the reference's K x K loop actually timed")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=4, help="batches per round and method")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    return p.parse_args()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_cluster_metrics(n: int, k: int, loop_rows: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, size=n)
    preds = np.where(rng.random(n) < 0.6, rng.permutation(k)[labels], rng.integers(0, k, size=n))
    print(f"== cluster metrics: {n} samples x {k} classes ==")
    times = {}
    for name, fn in [("nmi + ami + ari + acc (cluster_metrics)", lambda: cluster_metrics(labels, preds)),
                     ("acc (Hungarian) alone", lambda: hungarian_accuracy(labels, preds)),
                     ("acc_majority", lambda: majority_accuracy(labels, preds)),
                     ("contingency, one bincount", lambda: contingency(labels, preds))]:
        _, times[name] = timed(fn)
        print(f"{name:<44}{times[name]:>10.3f} s")

    def reference_rows(rows: int) -> np.ndarray:
        counts = np.zeros((rows, k), dtype=np.int64)
        for p in range(rows):
            for t in range(k):
                counts[p, t] = int(np.sum((preds == p) & (labels == t)))
        return counts

    partial, seconds = timed(lambda: reference_rows(loop_rows))
    assert np.array_equal(partial, contingency(labels, preds)[:loop_rows])
    estimate = seconds * k / loop_rows
    print(f"{'contingency, reference K x K loop (est.)':<44}{estimate:>10.1f} s   "
          f"({loop_rows} of {k} rows timed: {seconds:.2f} s)")
    print(f"speed-up of the bincount over the loop: {estimate / times['contingency, one bincount']:.0f}x")


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0, i


def bench_extraction(args) -> None:
    device = resolve_device(args.device)
    dtype = autocast_dtype(args.precision, device, key="--precision")
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, image_size=args.image_size)
    net = backbone.module.to(device).eval()
    extractor = FeatureExtractor(net, backbone.family, backbone.feature_dim).eval()
    images = torch.randn(args.batches * args.batch_size, 3, args.image_size, args.image_size)
    on_device = images.to(device)
    dataset = _Tensors(images)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def bare():
        for start in range(0, len(on_device), args.batch_size):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                net(on_device[start:start + args.batch_size])
        sync()

    def extraction():
        extract_features(extractor, dataset, args.batch_size, 0, device, DistEnv(), dtype)
        sync()

    bare(), extraction()  # warm-up
    rates = {"bare": [], "extract": []}
    for _ in range(args.rounds):
        for name, fn in (("bare", bare), ("extract", extraction)):
            _, seconds = timed(fn)
            rates[name].append(len(images) / seconds)
    bare_rate, extract_rate = statistics.median(rates["bare"]), statistics.median(rates["extract"])
    print(f"== feature extraction: {args.backbone}, {args.image_size} px, batch {args.batch_size}, {args.precision}, "
          f"{device.type} ({describe_hardware(device)}) ==")
    print(f"bare inference (tensors already on the device): {bare_rate:10.1f} images/s")
    print(f"extract_features (loader, host copy, gather):    {extract_rate:10.1f} images/s")
    print(f"ratio extraction / bare: {extract_rate / bare_rate:.3f}")


def main():
    args = parse_args()
    bench_cluster_metrics(args.samples, args.classes, args.loop_rows)
    bench_extraction(args)


if __name__ == "__main__":
    main()
