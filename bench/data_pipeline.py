"""Augmentation throughput per worker core, and the workers it takes to feed a training step.

Each worker of the training DataLoader decodes a JPEG and runs the view pipeline of the config on
it (the shipped ImageNet recipes: two 224-px views, or 2 x 224 + L x 96 multi-crop). This script
times exactly that work, the dataset's __getitem__ path (decode, convert, the config's transform,
per-sample seeding), on one core, side by side for both pipelines. Images are ImageNet-sized JPEGs
made in memory (smooth random fields, so they compress and decode like photographs, not like noise).

With augment.on_device the workers only decode and draw the parameters (the "planner" rows), and the
pixels are made in batches on the device (the "device side" rows: images/s of DeviceAugment on
batches of --batch-size, on --device).

Workers needed = the step's images/s / one worker's images/s. The step rate is given with
--step-rate, or measured with --measure-step: the TWIST step of the config's model (backbone, head,
precision, channels_last, 224 px and the local crops' size) on pre-made views on --device, as
bench/step_overhead.py times it, for both settings. The script then says how many worker cores each
pipeline needs, and that with fewer the data pipeline is the bottleneck.

    python bench/data_pipeline.py
    python bench/data_pipeline.py --step-rate 1200 700
    python bench/data_pipeline.py --device cuda --measure-step       # a GPU: workers per GPU for ResNet-50
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_overhead import make_steps, step_rate  # noqa: E402
from step_overhead import parse_args as step_args  # noqa: E402

from twist.config import load_config
from twist.data.datasets import sample_seed
from twist.data.device_augment import DeviceAugment, build_view_planner, collate_planned
from twist.data.transforms import build_train_transform
from twist.data.view_specs import AugmentConfig, view_stages
from twist.engine.runtime import describe_hardware, resolve_device
from twist.methods import build_method


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


def first_views(cfg):
    """The augment section and the views of the run's first stage."""
    augment = AugmentConfig.from_config(cfg)
    return augment, view_stages(augment, cfg["data"]["image_size"], build_method(cfg))[0][1]


def pipeline_rate(cfg, files: list[bytes], rounds: int, planner: bool = False) -> float:
    """Images/s of decode + the config's view pipeline (or its planner) on one thread (median over rounds)."""
    transform = (build_view_planner if planner else build_train_transform)(*first_views(cfg))
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        for index, data in enumerate(files):
            torch.random.default_generator.manual_seed(sample_seed(cfg["seed"], r, index))  # as ViewsDataset does
            with Image.open(io.BytesIO(data)) as img:
                transform(img.convert("RGB"))
        rates.append(len(files) / (time.perf_counter() - start))
    return statistics.median(rates)


def device_rate(cfg, files: list[bytes], batch_size: int, device: torch.device, rounds: int) -> float:
    """Images/s of the device side of augment.on_device on batches of ``batch_size`` images."""
    section, views = first_views(cfg)
    planner, augment = build_view_planner(section, views), DeviceAugment([view.size for view in views]).to(device)
    items = []
    for index in range(batch_size):
        torch.manual_seed(index)
        with Image.open(io.BytesIO(files[index % len(files)])) as img:
            items.append((planner(img.convert("RGB")), 0, index))
    (images, plans), *_ = collate_planned(items)
    images, plans = images.to(device), plans.to(device)
    rates = []
    for _ in range(rounds + 1):  # the first round warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        augment(images, plans)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(batch_size / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def measured_step_rate(cfg, device_name: str, batch_size: int, rounds: int) -> float:
    """Images/s of the TWIST step of ``cfg``'s model and views on pre-made tensors (median over rounds)."""
    model, head, train, augment = cfg["model"], cfg["model"]["head"], cfg["train"], cfg["augment"]
    argv = ["--backbone", model["backbone"], "--image-size", str(cfg["data"]["image_size"]),
            "--batch-size", str(batch_size), "--hidden-dim", str(head["hidden_dim"]),
            "--num-classes", str(head["num_classes"]), "--local-crops", str(augment["local_crops"]),
            "--local-size", str(augment["local_size"]), "--precision", train["precision"], "--device", device_name]
    if train["channels_last"]:
        argv.append("--channels-last")
    steps, device = make_steps(step_args(argv), which=("twist",))
    step_rate(steps["twist"], device, 2, batch_size)  # warm-up
    return statistics.median(step_rate(steps["twist"], device, 3, batch_size) for _ in range(rounds))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pretrain/resnet50_2view.yaml",
                   help="the two-view recipe; the multi-crop one adds --local-crops local views to it")
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="batch of the device-side measurement")
    p.add_argument("--device", default="auto", help="where the device side of augment.on_device runs")
    p.add_argument("--step-rate", type=float, nargs=2, metavar=("TWO_VIEW", "MULTI_CROP"),
                   help="the training step's images/s for the two settings (e.g. measured on a GPU); "
                        "default: not given, only the per-core rates are printed")
    p.add_argument("--measure-step", action="store_true",
                   help="measure the step rates instead: the config's TWIST step on --device")
    p.add_argument("--step-batch-size", type=int, default=128, help="per-device batch of --measure-step")
    args = p.parse_args()
    if args.measure_step and args.step_rate:
        p.error("give --step-rate or --measure-step, not both")
    torch.set_num_threads(1)  # one worker = one core
    files = imagenet_like_jpegs(args.images)
    two_view = load_config(args.config, ["data.dataset=synthetic"])
    multi_crop = load_config(args.config, ["data.dataset=synthetic", f"augment.local_crops={args.local_crops}"])
    size, local_size = two_view["data"]["image_size"], two_view["augment"]["local_size"]
    settings = [(f"two views, 2 x {size}", two_view),
                (f"multi-crop, 2 x {size} + {args.local_crops} x {local_size}", multi_crop)]
    rates = [pipeline_rate(cfg, files, args.rounds) for _, cfg in settings]
    planner_rates = [pipeline_rate(cfg, files, args.rounds, planner=True) for _, cfg in settings]
    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads() if device.type == "cuda" else os.cpu_count() or 1)
    device_rates = [device_rate(cfg, files, args.batch_size, device, args.rounds) for _, cfg in settings]
    device_hardware = describe_hardware(device)
    if args.measure_step:
        args.step_rate = [measured_step_rate(cfg, args.device, args.step_batch_size, args.rounds)
                          for _, cfg in settings]
    torch.set_num_threads(1)

    print(f"hardware: {describe_hardware()} (one thread = one worker); {args.images} JPEGs of 500 x 375")
    print(f"{'pipeline':<36}{'CPU pipeline':>14}{'on_device: planner':>20}{'device side':>14}")
    print(f"{'':<36}{'img/s per core':>14}{'img/s per core':>20}{'img/s':>14}")
    for (name, _), rate, planned, made in zip(settings, rates, planner_rates, device_rates):
        print(f"{name:<36}{rate:>14.1f}{planned:>20.1f}{made:>14.1f}")
    print(f"multi-crop / two-view cost of the CPU pipeline: {rates[0] / rates[1]:.2f}x; a worker feeds "
          f"{planner_rates[1] / rates[1]:.1f}x more multi-crop images/s with augment.on_device; "
          f"device side on {device_hardware}")
    if args.step_rate:
        if args.measure_step:
            print(f"step rates measured on {device_hardware}, batch {args.step_batch_size}: "
                  + ", ".join(f"{rate:.1f}" for rate in args.step_rate) + " images/s")
        for (name, _), rate, planned, step in zip(settings, rates, planner_rates, args.step_rate):
            print(f"{name}: a step at {step:.0f} images/s needs {int(np.ceil(step / rate))} worker cores "
                  f"({step / rate:.1f}) with the CPU pipeline, {int(np.ceil(step / planned))} ({step / planned:.1f}) "
                  f"with augment.on_device; with fewer, the data pipeline is the bottleneck")


if __name__ == "__main__":
    main()
