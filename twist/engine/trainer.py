"""The pretraining run: one loop that reads top to bottom.

config → dataset → views (2 global + L local) → twin model (backbone per resolution → head → NBS)
→ TWIST loss, or the self-labeling loss from its start epoch → optimiser step with the scheduled lr
and wd → EMA teacher update → log → periodic atomic checkpoint; then backbone export and evaluation.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from twist.atomic import atomic_write
from twist.config import ConfigError, save_config
from twist.data import DatasetError, EpochSampler, ViewsDataset, build_source, build_train_transform, collate_views
from twist.data.datasets import SkippedImage
from twist.data.device_augment import DeviceAugment, build_view_planner, collate_planned, view_sizes
from twist.distributed import (
    DistEnv,
    all_gather_cat,
    all_reduce_mean,
    init_distributed,
    reduce_for_logging,
    synchronise_batch_norms,
    world_size,
)
from twist.engine.checkpoint import atomic_torch_save, describe_tensors, nonfinite_tensors, rng_state
from twist.engine.logging import RunLog, WandbRun, plot_training_curves
from twist.engine.monitors import RunMonitors
from twist.engine.optim import apply_schedules, build_optimizer, build_schedules
from twist.engine.resume import clear_stale_temporaries, describe_changes, move_run_aside, restore_run
from twist.engine.run_lock import RunFolderLocked, RunLock
from twist.engine.runtime import autocast_dtype, resolve_device, seed_everything
from twist.eval.cluster import evaluate_clusters
from twist.losses import BarlowTwinsLoss, SelfLabelLoss, TwistLoss, WMSELoss
from twist.models import build_model
from twist.models.teacher import EMATeacher

CHECKPOINT = "checkpoint.pth"
BACKBONE = "backbone.pth"
TEACHER_BACKBONE = "teacher_backbone.pth"
CONFIG = "config.yaml"
METRICS = "metrics.json"
CURVES = "training_curves.png"
# The files a run writes whole (atomically, through a temporary beside them).
OUTPUTS = (CHECKPOINT, BACKBONE, TEACHER_BACKBONE, CONFIG, METRICS, CURVES)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; nothing non-finite was written."""


def build_train_loader(cfg: dict[str, Any], device: torch.device,
                       env: DistEnv = DistEnv()) -> tuple[DataLoader, EpochSampler]:
    data = cfg["data"]
    sl = cfg["self_label"]
    # With augment.on_device the workers return the decoded image and every view's drawn parameters.
    build, collate = ((build_view_planner, collate_planned) if cfg["augment"]["on_device"]
                      else (build_train_transform, collate_views))
    later = [(sl["start_epoch"], build(cfg, self_labeling=True))] if sl["enabled"] else []
    dataset = ViewsDataset(build_source(cfg, data["train_split"]), build(cfg), cfg["seed"],
                           skip_corrupt=data["skip_corrupt"], later_stages=later)
    sampler = EpochSampler(len(dataset), cfg["train"]["batch_size"], seed=cfg["seed"], rank=env.rank,
                           world_size=env.world_size)
    workers = data["num_workers"]
    loader = DataLoader(dataset, batch_size=cfg["train"]["batch_size"], sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=data["pin_memory"] and device.type == "cuda",
                        persistent_workers=data["persistent_workers"] and workers > 0, drop_last=True,
                        prefetch_factor=data["prefetch_factor"] if workers > 0 else None,
                        # Its own generator: creating an iterator then draws no number from the global
                        # stream, which the model's dropout uses and a resumed run restores.
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    return loader, sampler


def gathered_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (each rank draws its own dropout), so that a resume restores all of them."""
    states = [rng_state()]
    if world_size() > 1:
        states = [None] * world_size()
        torch.distributed.all_gather_object(states, rng_state())
    return states


def save_checkpoint(path: str, model, teacher, optimizer, scaler, step: int, epoch: int,
                    cfg: dict[str, Any], rng_states: list[dict[str, Any]]) -> None:
    state = {
        "model": model.state_dict(),
        "backbone": model.backbone.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": rng_states,
        "config": cfg,
    }
    if teacher is not None:
        state["teacher"] = teacher.model.state_dict()
        state["teacher_backbone"] = teacher.model.backbone.state_dict()
    atomic_torch_save(state, path)


def take_run_folder(output_dir: str, env: DistEnv, restart: bool) -> RunLock | None:
    """Rank 0 locks ``output_dir``, then (with ``restart``) moves the old run aside and clears stale
    temporaries; the other ranks take no lock and write nothing.

    Every rank learns the outcome, so that none waits in a collective for a rank 0 that gave up.
    """
    lock, failure = None, None
    if env.is_main:
        try:
            os.makedirs(output_dir, exist_ok=True)
            lock = RunLock.acquire(output_dir)
            if restart:
                moved = move_run_aside(output_dir)
                if moved:
                    print(f"--restart: the previous run in {output_dir} was moved to {moved}")
            clear_stale_temporaries(output_dir, OUTPUTS)
        except Exception as err:  # noqa: BLE001 - whatever stops rank 0 here must stop every rank
            failure = err
    if env.enabled:
        outcome = [None if failure is None else str(failure)]
        torch.distributed.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None and not env.is_main:
            raise RunFolderLocked(f"rank 0 could not take the run folder: {outcome[0]}")
    if failure is not None:
        if lock is not None:
            lock.release()
        raise failure
    return lock


class FiniteCheckpoints:
    """Checks that what is about to be written holds no NaN or inf (one host read), and names the last
    checkpoint on disk that is finite, for the message of a run that diverged."""

    def __init__(self, path: str, device: torch.device, collective: bool):
        self.path, self.device, self.collective = path, device, collective
        self.step: int | None = None  # of the last finite checkpoint on disk

    def last(self) -> str:
        if self.step is None:
            return f"there is no finite checkpoint in {os.path.dirname(self.path) or '.'} yet"
        return f"the last finite checkpoint is {self.path} (step {self.step})"

    def require(self, states: dict[str, Any], step: int, what: str, collective: bool | None = None) -> None:
        names = nonfinite_tensors(states)
        found = len(names)
        if self.collective if collective is None else collective:  # every rank stops together, or none does
            found = int(reduce_for_logging(torch.tensor([float(found)], device=self.device)).item() > 0)
        if found:
            where = describe_tensors(names) if names else "the tensors of another rank"
            raise TrainingDiverged(f"NaN or inf in {where} at step {step}: {what} was not written, and "
                                   f"{self.last()}")


class SkippedImages:
    """The unreadable images ``data.skip_corrupt`` dropped: each file named once, on stderr and (through
    rank 0) in log.jsonl, and a stop once more than ``data.max_skipped_fraction`` of the dataset's
    files were found unreadable (each rank counts the files it read itself)."""

    def __init__(self, dataset_size: int, max_fraction: float):
        self.dataset_size, self.max_fraction = dataset_size, max_fraction
        self.files: dict[str, str] = {}  # location -> error, in the order found
        self.total = 0  # skipped items: a file counts again each epoch it is drawn
        self._unlogged: list[dict[str, Any]] = []
        self._logged: set[str] = set()

    def add(self, skipped: list[SkippedImage], step: int) -> None:
        self.total += len(skipped)
        for image in skipped:
            if image.location not in self.files:
                self.files[image.location] = image.error
                print(f"skipped an unreadable image at step {step} (data.skip_corrupt): {image.error}",
                      file=sys.stderr)
                self._unlogged.append({"kind": "skipped", "step": step, "file": image.location,
                                       "error": image.error})

    def publish(self, log: RunLog | None, gather: bool) -> None:
        """Write the newly found files to the log; with ``gather`` (a collective), every rank's."""
        records, self._unlogged = self._unlogged, []
        if gather:
            parts: list[Any] = [None] * world_size()
            torch.distributed.all_gather_object(parts, records)
            records = [record for part in parts for record in part]
        for record in records:
            if log is not None and record["file"] not in self._logged:
                self._logged.add(record["file"])
                log.write(record)

    def check(self, step: int, batch: list[SkippedImage], kept: bool) -> None:
        """Stop past the limit, or when no image of the batch of ``step`` could be read."""
        if len(self.files) > self.max_fraction * self.dataset_size:
            raise DatasetError(f"{len(self.files)} of the {self.dataset_size} images are unreadable, more than "
                               f"data.max_skipped_fraction={self.max_fraction:g} allows (the first: "
                               f"{', '.join(list(self.files)[:3])}); fix or remove them, or raise the limit")
        if not kept:  # nothing to train on: the step would only advance the schedules
            raise DatasetError(f"every image of the batch of step {step} is unreadable (the first: "
                               f"{', '.join(image.location for image in batch[:3])}); fix or remove those files")


def optimizer_step(loss: torch.Tensor, model, optimizer, scaler: torch.amp.GradScaler, clip_grad_norm: float) -> None:
    """Backward, optional clipping of the global gradient norm, step; the same in every precision."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step")


def nbs_ranks_per_bunch(cfg: dict[str, Any], world: int) -> int:
    """How many consecutive ranks share NBS statistics: ``model.head.nbs_bunch_size`` images, or all."""
    bunch, batch = cfg["model"]["head"]["nbs_bunch_size"], cfg["train"]["batch_size"]
    if bunch == 0:
        return world
    if bunch % batch or world % (bunch // batch):
        raise ConfigError(f"model.head.nbs_bunch_size={bunch} must be a multiple of train.batch_size={batch}, and "
                          f"the world size ({world}) a multiple of bunch/batch ({bunch / batch:g}) ranks")
    return bunch // batch


def build_distributed_model(cfg: dict[str, Any], device: torch.device, env: DistEnv):
    """The twin model on ``device``; across ranks, every batch norm synchronised (TWIST's NBS per bunch)."""
    model = build_model(cfg).to(device)
    if env.enabled:
        synchronise_batch_norms(model.backbone, env.world_size, device.type)
        synchronise_batch_norms(model.head.mlp, env.world_size, device.type)
        if cfg["method"] == "twist":
            synchronise_batch_norms(model.head, nbs_ranks_per_bunch(cfg, env.world_size), device.type)
    if cfg["train"]["channels_last"]:
        model.backbone.to(memory_format=torch.channels_last)
    if cfg["train"]["compile"]:
        model.backbone.compile()  # in place: the state-dict keys stay those of the plain module
    return model


class MethodLoss:
    """The objective of ``cfg['method']`` as one call: ``(outputs, step, indices) -> terms``.

    Every objective reduces exactly across ranks: the loss and its gradients are those of the global
    batch. W-MSE's random sub-batches come from a generator seeded by (seed, step), the same on every
    rank and again after a resume.
    """

    def __init__(self, cfg: dict[str, Any]):
        self.method, self.seed = cfg["method"], cfg["seed"]
        if self.method == "barlow_twins":
            self.loss = BarlowTwinsLoss(cfg["barlow_twins"]["lam"], batch_mean=all_reduce_mean, gather=all_gather_cat)
        elif self.method == "wmse":
            wm = cfg["wmse"]
            self.loss = WMSELoss(wm["w_size"], wm["w_iter"], wm["w_eps"], wm["normalize"], gather=all_gather_cat)
        else:
            self.loss = TwistLoss(**cfg["loss"], batch_mean=all_reduce_mean)

    def __call__(self, outputs, step: int, indices: torch.Tensor, teacher_outputs=None) -> dict[str, torch.Tensor]:
        if self.method == "wmse":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return self.loss(outputs, generator, keys=indices)
        if self.method == "barlow_twins":
            return self.loss(outputs)
        return self.loss(outputs, teacher_outputs)


def training_state(model, teacher, optimizer) -> dict[str, Any]:
    """The tensors a checkpoint carries that training changes: the ones to check for NaN and inf."""
    return {"model": model.state_dict(), "teacher": teacher.model.state_dict() if teacher is not None else {},
            "optimizer": optimizer.state_dict()}


def export_backbones(output_dir: str, model, teacher, finite: FiniteCheckpoints, step: int) -> None:
    """Write backbone.pth (and teacher_backbone.pth), after checking them for NaN and inf; rank 0 only."""
    exports = {BACKBONE: model.backbone.state_dict()}
    if teacher is not None:
        exports[TEACHER_BACKBONE] = teacher.model.backbone.state_dict()
    finite.require(exports, step, " and ".join(exports), collective=False)
    for name, state in exports.items():
        atomic_torch_save(state, os.path.join(output_dir, name))


def train(cfg: dict[str, Any], output_dir: str, max_steps: int | None = None, restart: bool = False) -> dict[str, Any]:
    """Pretrain (resuming from ``output_dir/checkpoint.pth`` if present) and evaluate.

    Runs alone, or as one rank of a ``torchrun``/SLURM job: then every batch norm spans the ranks,
    the loss is that of the global batch, and only rank 0 writes files. ``max_steps`` stops the run
    after that many optimiser steps in total, with a checkpoint, as a job that runs out of time
    would; running again continues from there.

    One run at a time holds ``output_dir`` (its lock, see :mod:`twist.engine.run_lock`). A resumed
    run keeps the config its checkpoint was written with, but for the keys ``RESUMABLE`` allows;
    ``restart`` first moves an earlier run to ``output_dir/previous/<date>/`` and starts over.
    """
    device = resolve_device(cfg["device"])
    env = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    with contextlib.ExitStack() as cleanup:  # on any exit: the log closed, then the lock released
        lock = take_run_folder(output_dir, env, restart)
        if lock is not None:
            cleanup.callback(lock.release)
        return _run(cfg, output_dir, device, env, max_steps, cleanup)


def _run(cfg: dict[str, Any], output_dir: str, device: torch.device, env: DistEnv, max_steps: int | None,
         cleanup: contextlib.ExitStack) -> dict[str, Any]:
    amp_dtype = autocast_dtype(cfg["train"]["precision"], device)
    seed_everything(cfg["seed"])  # the same initial weights on every rank

    loader, sampler = build_train_loader(cfg, device, env)
    model = build_distributed_model(cfg, device, env)
    teacher = (EMATeacher(build_distributed_model(cfg, device, env), model) if cfg["teacher"]["enabled"]
               else None)
    global_batch = cfg["train"]["batch_size"] * env.world_size
    if cfg["method"] == "wmse" and global_batch % cfg["wmse"]["w_size"]:
        raise ConfigError(f"the global batch ({cfg['train']['batch_size']} x {env.world_size} processes = "
                          f"{global_batch}) must be a multiple of wmse.w_size ({cfg['wmse']['w_size']})")
    method_loss = MethodLoss(cfg)
    self_label_loss = SelfLabelLoss(cfg["loss"]["tau"])
    optimizer = build_optimizer(model, cfg["optim"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    epochs, steps_per_epoch = cfg["train"]["epochs"], sampler.batches_per_epoch
    total_steps = epochs * steps_per_epoch
    schedules = build_schedules(cfg, steps_per_epoch, global_batch=global_batch)
    self_label_from = (cfg["self_label"]["start_epoch"] * steps_per_epoch if cfg["self_label"]["enabled"]
                       else total_steps)

    step, changes = 0, None
    checkpoint_path = os.path.join(output_dir, CHECKPOINT)
    finite = FiniteCheckpoints(checkpoint_path, device, collective=env.enabled)
    if os.path.exists(checkpoint_path):
        step, changes = restore_run(checkpoint_path, cfg, model, teacher, optimizer, scaler, env.rank, env.world_size)
        finite.step = step  # restore_run refuses a checkpoint that holds NaN or inf
        if env.is_main:
            changed = f"; changed: {describe_changes(changes)}" if changes else ""
            print(f"resumed from {checkpoint_path} at step {step} (epoch {step // steps_per_epoch}){changed}")
    else:
        torch.manual_seed(cfg["seed"] + env.rank)  # each rank its own dropout stream
    # Only rank 0 writes; the others keep no handle on the output directory.
    if env.is_main:
        save_config(cfg, os.path.join(output_dir, CONFIG))
    wandb = (WandbRun(cfg["logging"], cfg, output_dir, job_type="pretrain")
             if env.is_main and cfg["logging"]["wandb"] else None)
    log = (cleanup.enter_context(contextlib.closing(RunLog(output_dir, continue_from=step, wandb=wandb)))
           if env.is_main else None)
    if log is not None and changes is not None:
        log.write({"kind": "resume", "step": step, "checkpoint": checkpoint_path, "changed": changes})
    stop_at = total_steps if max_steps is None else min(max_steps, total_steps)
    checkpoint_every = cfg["train"]["checkpoint_every"]
    bar = _progress(stop_at, step, cfg["train"]["progress_bar"] and env.is_main)
    raw_model = model
    if env.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    monitors = RunMonitors(cfg, raw_model, loader.dataset.source, device, env, amp_dtype)
    cleanup.callback(monitors.close)

    def checkpoint(epoch: int) -> None:
        finite.require(training_state(raw_model, teacher, optimizer), step, checkpoint_path)
        rng_states = gathered_rng_states()  # collective: every rank takes part
        if env.is_main:
            save_checkpoint(checkpoint_path, raw_model, teacher, optimizer, scaler, step, epoch, cfg, rng_states)
        finite.step = step

    skips = SkippedImages(len(loader.dataset), cfg["data"]["max_skipped_fraction"])
    gather_skips = cfg["data"]["skip_corrupt"] and env.enabled  # rank 0 logs every rank's, at logging steps
    window_start, window_images = time.perf_counter(), 0
    memory_format = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    device_augment = DeviceAugment(view_sizes(cfg)).to(device) if cfg["augment"]["on_device"] else None

    while step < stop_at:
        epoch, start_batch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for batch in loader:
            apply_schedules(optimizer, schedules, step, cfg["optim"]["bias_lr_ratio"])
            views, labels, indices, skipped = batch
            if skipped:
                skips.add(skipped, step + 1)
                if not env.enabled:
                    skips.publish(log, gather=False)
                skips.check(step + 1, skipped, kept=views is not None)
            if device_augment is not None:
                images, plans = views
                views = device_augment(images.to(device, non_blocking=True), plans)  # plans stay on the host
            views = [v.to(device, non_blocking=True, memory_format=memory_format) for v in views]

            monitors.expect_features(views[0].shape[0])
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(views)
                teacher_logits = teacher(views[:2]) if teacher is not None else None  # globals only
            if step >= self_label_from:
                terms = self_label_loss(logits, float(schedules["quantile"][step]), teacher_logits)
            else:
                terms = method_loss(logits, step, indices, teacher_logits)
            optimizer_step(terms["loss"], model, optimizer, scaler, cfg["optim"]["clip_grad_norm"])
            monitors.after_step(labels)
            if teacher is not None:
                teacher.update(raw_model, float(schedules["momentum"][step]))
            step += 1
            window_images += views[0].shape[0]
            bar.update(1)

            if step % cfg["train"]["log_every"] == 0 or step == stop_at:
                names = list(terms)
                reduced = reduce_for_logging(torch.stack([terms[k].detach().float() for k in names]))
                values = dict(zip(names, reduced.tolist()))  # means over ranks: the global figures
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(f"loss is {values['loss']} at step {step}; {finite.last()}")
                if gather_skips:
                    skips.publish(log, gather=True)
                elapsed = time.perf_counter() - window_start
                stage = "self_label" if step > self_label_from else cfg["method"]
                record = {"kind": "train", "stage": stage, "step": step, "epoch": epoch, **values,
                          "lr": optimizer.param_groups[0]["lr"],
                          "weight_decay": optimizer.param_groups[0]["weight_decay"],
                          "images_per_s": env.world_size * window_images / max(elapsed, 1e-9),
                          "skipped_images": skips.total}
                monitor_records = monitors.at_logging_step(step, epoch)  # collective
                if log is not None:
                    for written in (record, *monitor_records):
                        log.write(written)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.3g}",
                                img_s=f"{record['images_per_s']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if checkpoint_every and step % checkpoint_every == 0:
                checkpoint(epoch)
            if step >= stop_at:
                break
        if step % steps_per_epoch == 0 or step >= stop_at:
            # Before the checkpoint: a run killed while the monitor runs repeats the epoch and its monitor.
            knn_record = monitors.at_epoch_end(step, step // steps_per_epoch) if step % steps_per_epoch == 0 else None
            if knn_record is not None:
                window_start += knn_record["seconds"]  # images_per_s measures training alone
                if log is not None:
                    log.write(knn_record)
            checkpoint(step // steps_per_epoch)
            if gather_skips:
                skips.publish(log, gather=True)
            if log is not None:
                log.write({"kind": "epoch", "step": step, "epoch": epoch, "skipped_images": skips.total})
    bar.close()
    result: dict[str, Any] = {"step": step, "finished": step >= total_steps}
    if not env.is_main:
        return result
    model = raw_model

    export_backbones(output_dir, model, teacher, finite, step)
    if step >= total_steps and cfg["eval"]["enabled"]:
        metrics = evaluate_clusters(model, cfg, device, amp_dtype, kmeans=cfg["eval"]["kmeans_baseline"])
        atomic_write(os.path.join(output_dir, METRICS), lambda f: json.dump(metrics, f, indent=2),
                     binary=False)
        log.write({"kind": "eval", "step": step, **{k: v for k, v in metrics.items() if k != "baseline"}})
        result["metrics"] = metrics
    log.close()
    if step >= total_steps:
        plot_training_curves(log.path, os.path.join(output_dir, CURVES))
    return result
