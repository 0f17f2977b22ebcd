"""Train-step throughput: the full TWIST step vs the same backbone's bare step, side by side.

Both steps run on the same pre-made tensors (two views of a batch, or multi-crop: two global views
and L local ones), with the same optimiser (LARS) and the same precision. The bare step is backbone
forward (once per view size, as the model does) → mean of features → backward → LARS step;
the TWIST step is the trainer's (its loss module and optimizer_step): the projection head, NBS, the
TWIST loss, schedule updates and LARS; --method runs Barlow Twins' or W-MSE's step instead.
Rounds alternate between the two so that machine noise hits both alike.

    python bench/step_overhead.py                      # CPU defaults: ResNet-18, 64 px, batch 128
    python bench/step_overhead.py --local-crops 6 --local-size 32    # multi-crop, scaled down for CPU
    python bench/step_overhead.py --method barlow_twins   # the companion objectives' steps
    python bench/step_overhead.py --method wmse --batch-size 256     # a multiple of wmse.w_size
    python bench/step_overhead.py --backbone resnet50 --image-size 224 --precision bf16 --device cuda
    python bench/step_overhead.py --backbone resnet50 --image-size 224 --local-crops 6 --local-size 96 \
        --precision bf16 --device cuda --channels-last
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from twist.config import load_config
from twist.engine.optim import OptimConfig, ScheduleConfig, apply_schedules, build_optimizer, build_schedules
from twist.engine.runtime import autocast_dtype, describe_hardware, resolve_device
from twist.engine.trainer import optimizer_step
from twist.methods import build_method
from twist.models import BackboneConfig, build_backbone, build_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="twist", choices=["twist", "barlow_twins", "wmse"],
                   help="the objective; the head options apply to TWIST only")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden-dim", type=int, default=4096)
    p.add_argument("--num-classes", type=int, default=4096)
    p.add_argument("--local-crops", type=int, default=0, help="multi-crop: this many local views")
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs for both steps")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per round and method")
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_rate(step_fn, device, steps: int, batch_size: int) -> float:
    """Images/s of ``steps`` calls of ``step_fn`` (waiting for the device at both ends)."""
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step_fn(i)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def make_steps(args, which=("twist", "bare")):
    """The named step functions on pre-made views (``step(i)``), and the device; shared with bench/memory.py."""
    cfg = load_config(None, [f"method={args.method}", f"model.backbone={args.backbone}", "data.dataset=synthetic",
                             f"data.image_size={args.image_size}", f"model.head.hidden_dim={args.hidden_dim}",
                             f"model.head.num_classes={args.num_classes}", f"train.precision={args.precision}",
                             f"device={args.device}", "optim.warmup_epochs=0", "train.epochs=1"])
    device = resolve_device(cfg["device"])
    dtype = autocast_dtype(cfg["train"]["precision"], device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    sizes = [args.image_size] * 2 + [args.local_size] * args.local_crops
    views = [torch.randn(args.batch_size, 3, s, s, device=device).to(memory_format=memory_format) for s in sizes]
    schedules = build_schedules(ScheduleConfig.from_config(cfg), steps_per_epoch=10_000, global_batch=args.batch_size)
    steps = {}

    if "twist" in which:
        twin = build_model(BackboneConfig.from_config(cfg), build_method(cfg)).to(device).train()
        twin.backbone.to(memory_format=memory_format)
        twin_opt = build_optimizer(twin, OptimConfig.from_config(cfg))
        method = build_method(cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        indices = torch.arange(args.batch_size)

        def twist_step(i):  # the trainer's step, on pre-made views
            apply_schedules(twin_opt, schedules, i, cfg["optim"]["bias_lr_ratio"])
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                outputs = twin(views)
            terms = method.loss(outputs, i, indices)
            optimizer_step(terms["loss"], twin, twin_opt, scaler, cfg["optim"]["clip_grad_norm"])
            return terms

        steps["twist"] = twist_step

    if "bare" in which:
        groups = [torch.cat([v for v in views if v.shape[-1] == size]) for size in dict.fromkeys(sizes)]
        bare = build_backbone(args.backbone, image_size=args.image_size).module.to(device).train()
        bare.to(memory_format=memory_format)
        bare_opt = build_optimizer(bare, OptimConfig.from_config(cfg))
        apply_schedules(bare_opt, schedules, 100, 1.0)

        def bare_step(i):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(bare(group).float().mean() for group in groups)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

        steps["bare"] = bare_step
    return steps, device


def main():
    args = parse_args()
    label = {"twist": "TWIST", "barlow_twins": "Barlow Twins", "wmse": "W-MSE"}[args.method]
    steps, device = make_steps(args)
    twist_step, bare_step = steps["twist"], steps["bare"]

    def timed(step_fn):
        return step_rate(step_fn, device, args.steps, args.batch_size)

    timed(twist_step), timed(bare_step)  # warm-up: allocator, kernels, autotuning
    twist_rates, bare_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(timed(bare_step))
        twist_rates.append(timed(twist_step))
    twist_rate, bare_rate = statistics.median(twist_rates), statistics.median(bare_rates)
    flops = {}
    for name, step_fn in steps.items():  # one counted step each: forward, backward and the optimiser's arithmetic
        with FlopCounterMode(display=False) as counter:
            step_fn(0)
        flops[name] = counter.get_total_flops()

    print(f"hardware: {describe_hardware(device)}")
    local = f" + {args.local_crops} x {args.local_size} px" if args.local_crops else ""
    print(f"setting:  {label}, {args.backbone}, batch {args.batch_size} images x (2 x {args.image_size} px{local}), "
          f"head {args.hidden_dim}/{args.num_classes}, {args.precision}, LARS"
          + (", channels_last" if args.channels_last else ""))
    print(f"{'step':<34}{'images/s':>12}")
    print(f"{'bare backbone fwd+bwd+LARS':<34}{bare_rate:>12.1f}")
    print(f"{label + ' (head, loss, sched.)':<34}{twist_rate:>12.1f}")
    print(f"ratio {label} / bare: {twist_rate / bare_rate:.3f}  (median of {args.rounds} rounds of {args.steps} steps)")
    print(f"arithmetic ceiling, bare FLOPs / {label} FLOPs per step: {flops['bare'] / flops['twist']:.3f}  "
          f"({flops['bare'] / 1e9:.1f} vs {flops['twist'] / 1e9:.1f} GFLOP: the head's matmuls are the difference)")


if __name__ == "__main__":
    main()
