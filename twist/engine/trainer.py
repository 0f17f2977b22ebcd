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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from twist.atomic import atomic_write
from twist.config import save_config
from twist.data import DatasetError, EpochSampler
from twist.data.datasets import SkippedImage
from twist.data.device_augment import DeviceAugment
from twist.data.loader import DataConfig, build_train_loader
from twist.data.view_specs import AugmentConfig, view_stages
from twist.distributed import (
    DistEnv,
    init_distributed,
    reduce_for_logging,
    synchronise_batch_norms,
    world_size,
)
from twist.engine.checkpoint import (
    Entry,
    atomic_torch_save,
    describe_tensors,
    nonfinite_tensors,
    rng_state,
    training_checkpoint,
)
from twist.engine.logging import RunLog, WandbRun, plot_training_curves
from twist.engine.monitors import MonitorConfig, RunMonitors
from twist.engine.optim import OptimConfig, ScheduleConfig, apply_schedules, build_optimizer, build_schedules
from twist.engine.resume import clear_stale_temporaries, describe_changes, move_run_aside, restore_run
from twist.engine.run_lock import RunFolderLocked, RunLock
from twist.engine.runtime import autocast_dtype, resolve_device, seed_everything
from twist.eval.cluster import EndOfRunEval, evaluate_clusters
from twist.methods import Method, build_method
from twist.models import BackboneConfig, TwinModel, build_model
from twist.models.teacher import EMATeacher, TeacherConfig
from twist.sections import read_section

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


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the run's length and batch, its precision, how often it logs and checkpoints, and the
    speed options that leave the figures as they are."""

    epochs: int
    batch_size: int
    precision: str
    log_every: int
    checkpoint_every: int
    progress_bar: bool
    channels_last: bool
    compile: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TrainConfig:
        return read_section(cls, cfg["train"])


@dataclass(frozen=True)
class RunSections:
    """The typed sections of a checked config that the run's parts take, each built once; the plain dict
    stays what is saved (``config.yaml``, the checkpoint) and compared on resume."""

    seed: int
    train: TrainConfig
    data: DataConfig
    augment: AugmentConfig
    backbone: BackboneConfig
    schedules: ScheduleConfig  # holds the optim and teacher sections
    monitor: MonitorConfig

    @property
    def optim(self) -> OptimConfig:
        return self.schedules.optim

    @property
    def teacher(self) -> TeacherConfig:
        return self.schedules.teacher

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RunSections:
        return cls(cfg["seed"], TrainConfig.from_config(cfg), DataConfig.from_config(cfg),
                   AugmentConfig.from_config(cfg), BackboneConfig.from_config(cfg), ScheduleConfig.from_config(cfg),
                   MonitorConfig.from_config(cfg))


def gathered_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (each rank draws its own dropout), so that a resume restores all of them."""
    states = [rng_state()]
    if world_size() > 1:
        states = [None] * world_size()
        torch.distributed.all_gather_object(states, rng_state())
    return states


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

    def check(self, step: int, skipped: list[SkippedImage], kept: bool) -> None:
        """Stop past the limit, or when no image of the batch of ``step`` could be read (``kept`` false:
        ``skipped`` is then the whole batch)."""
        if len(self.files) > self.max_fraction * self.dataset_size:
            raise DatasetError(f"{len(self.files)} of the {self.dataset_size} images are unreadable, more than "
                               f"data.max_skipped_fraction={self.max_fraction:g} allows (the first: "
                               f"{', '.join(list(self.files)[:3])}); fix or remove them, or raise the limit")
        if not kept:  # nothing to train on: the step would only advance the schedules
            raise DatasetError(f"every image of the batch of step {step} is unreadable (the first: "
                               f"{', '.join(image.location for image in skipped[:3])}); fix or remove those files")


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


def build_distributed_model(backbone: BackboneConfig, method: Method, train: TrainConfig, device: torch.device,
                            env: DistEnv):
    """The twin model on ``device``; across ranks, every batch norm synchronised (TWIST's NBS per bunch)."""
    model = build_model(backbone, method).to(device)
    if env.enabled:
        synchronise_batch_norms(model.backbone, env.world_size, device.type)
        synchronise_batch_norms(model.head.mlp, env.world_size, device.type)
        head_ranks = method.head_norm_ranks(train.batch_size, env.world_size)
        if head_ranks is not None:
            synchronise_batch_norms(model.head, head_ranks, device.type)
    if train.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if train.compile:
        model.backbone.compile()  # in place: the state-dict keys stay those of the plain module
    return model


def training_state(model, teacher, optimizer) -> dict[str, Any]:
    """The tensors a checkpoint carries that training changes: the ones to check for NaN and inf."""
    return {Entry.MODEL: model.state_dict(),
            Entry.TEACHER: teacher.model.state_dict() if teacher is not None else {},
            Entry.OPTIMIZER: optimizer.state_dict()}


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


@dataclass
class Run:
    """Everything one pretraining run holds while it trains; ``step`` counts optimiser steps in total."""

    cfg: dict[str, Any]  # as checked: what the run saves and a resume compares
    sections: RunSections
    output_dir: str
    device: torch.device
    env: DistEnv
    amp_dtype: torch.dtype | None
    loader: DataLoader
    sampler: EpochSampler
    model: TwinModel  # the module itself; ``trained`` is what the step calls (DDP across ranks)
    view_sizes: list[int]  # of every view of a batch, in order (the same in every stage)
    teacher: EMATeacher | None
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedules: dict[str, np.ndarray]
    steps_per_epoch: int
    total_steps: int
    finite: FiniteCheckpoints
    step: int = 0
    stop_at: int = 0
    trained: torch.nn.Module | None = None
    log: RunLog | None = None
    bar: Any = None
    monitors: RunMonitors | None = None
    skips: SkippedImages | None = None
    device_augment: DeviceAugment | None = None

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.output_dir, CHECKPOINT)


def build_run(cfg: dict[str, Any], output_dir: str, device: torch.device, env: DistEnv) -> Run:
    """Data, model (and teacher), objective, optimiser and every schedule of the run, precomputed."""
    sections = RunSections.from_config(cfg)
    train = sections.train
    amp_dtype = autocast_dtype(train.precision, device)
    seed_everything(sections.seed)  # the same initial weights on every rank
    method = build_method(cfg)
    method.check_batch(train.batch_size, env.world_size)
    stages = view_stages(sections.augment, sections.data.source.image_size, method)
    loader, sampler = build_train_loader(sections.data, sections.augment, stages, train.batch_size, sections.seed,
                                         device, env)
    model = build_distributed_model(sections.backbone, method, train, device, env)
    teacher = (EMATeacher(build_distributed_model(sections.backbone, method, train, device, env), model)
               if sections.teacher.enabled else None)
    optimizer = build_optimizer(model, sections.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = train.epochs * steps_per_epoch
    schedules = build_schedules(sections.schedules, steps_per_epoch, global_batch=train.batch_size * env.world_size)
    method.prepare(steps_per_epoch, schedules)
    finite = FiniteCheckpoints(os.path.join(output_dir, CHECKPOINT), device, collective=env.enabled)
    view_sizes = [view.size for view in stages[0][1]]
    return Run(cfg, sections, output_dir, device, env, amp_dtype, loader, sampler, model, view_sizes, teacher, method,
               optimizer, scaler, schedules, steps_per_epoch, total_steps, finite)


def resume(run: Run) -> dict[str, list] | None:
    """Continue from the run folder's checkpoint, if there is one; the changed config keys, if resumed."""
    path, env = run.checkpoint_path, run.env
    if not os.path.exists(path):
        torch.manual_seed(run.sections.seed + env.rank)  # each rank its own dropout stream
        return None
    run.step, changes = restore_run(path, run.cfg, run.model, run.teacher, run.optimizer, run.scaler, env.rank,
                                    env.world_size)
    run.finite.step = run.step  # restore_run refuses a checkpoint that holds NaN or inf
    if env.is_main:
        changed = f"; changed: {describe_changes(changes)}" if changes else ""
        print(f"resumed from {path} at step {run.step} (epoch {run.step // run.steps_per_epoch}){changed}")
    return changes


def start_reporting(run: Run, changes: dict[str, list] | None, max_steps: int | None,
                    cleanup: contextlib.ExitStack) -> None:
    """The saved config, the log (rank 0 only: the others keep no handle on the run folder), the
    progress bar up to the step the run stops at, the monitors and the tally of unreadable images."""
    cfg, env = run.cfg, run.env
    if env.is_main:
        save_config(cfg, os.path.join(run.output_dir, CONFIG))
        wandb = (WandbRun(cfg["logging"], cfg, run.output_dir, job_type="pretrain") if cfg["logging"]["wandb"]
                 else None)
        run.log = cleanup.enter_context(contextlib.closing(RunLog(run.output_dir, continue_from=run.step,
                                                                  wandb=wandb)))
        if changes is not None:
            run.log.write({"kind": "resume", "step": run.step, "checkpoint": run.checkpoint_path, "changed": changes})
    run.stop_at = run.total_steps if max_steps is None else min(max_steps, run.total_steps)
    run.bar = _progress(run.stop_at, run.step, run.sections.train.progress_bar and env.is_main)
    sections = run.sections
    run.monitors = RunMonitors(sections.monitor, sections.data, sections.augment.pipeline, run.model,
                               run.loader.dataset.source, run.device, env, run.amp_dtype)
    cleanup.callback(run.monitors.close)
    run.skips = SkippedImages(len(run.loader.dataset), sections.data.max_skipped_fraction)


def prepare_training(run: Run) -> None:
    """The model in train mode (wrapped in DDP across ranks) and, with augment.on_device, the views' maker."""
    run.trained = run.model
    if run.env.enabled:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        run.trained = DistributedDataParallel(run.model, device_ids=device_ids)
    run.trained.train()
    if run.sections.augment.on_device:
        run.device_augment = DeviceAugment(run.view_sizes).to(run.device)


def save_training_checkpoint(run: Run) -> None:
    """Checked for NaN and inf first; every rank takes part (the RNG states are gathered), rank 0 writes."""
    run.finite.require(training_state(run.model, run.teacher, run.optimizer), run.step, run.checkpoint_path)
    rng_states = gathered_rng_states()
    if run.env.is_main:
        epochs_done = run.step // run.steps_per_epoch
        atomic_torch_save(training_checkpoint(run.model, run.teacher, run.optimizer, run.scaler, run.step,
                                              epochs_done, run.cfg, rng_states), run.checkpoint_path)
    run.finite.step = run.step


def batch_views(run: Run, batch) -> tuple[list[torch.Tensor] | None, torch.Tensor, torch.Tensor]:
    """The batch's views on the training device, after noting (and checking) its unreadable images."""
    views, labels, indices, skipped = batch
    if skipped:
        run.skips.add(skipped, run.step + 1)
        if not run.env.enabled:
            run.skips.publish(run.log, gather=False)
        run.skips.check(run.step + 1, skipped, kept=views is not None)
    if run.device_augment is not None:
        images, plans = views
        views = run.device_augment(images.to(run.device, non_blocking=True), plans)  # plans stay on the host
    memory_format = torch.channels_last if run.sections.train.channels_last else torch.contiguous_format
    return [v.to(run.device, non_blocking=True, memory_format=memory_format) for v in views], labels, indices


def train_step(run: Run, views: list[torch.Tensor], labels: torch.Tensor,
               indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Schedule → forward → loss → optimiser step → teacher: one step of the run."""
    optim = run.sections.optim
    apply_schedules(run.optimizer, run.schedules, run.step, optim.bias_lr_ratio)
    run.monitors.expect_features(views[0].shape[0])
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        outputs = run.trained(views)
        teacher_outputs = run.teacher(views[:2]) if run.teacher is not None else None  # globals only
    terms = run.method.loss(outputs, run.step, indices, teacher_outputs)
    optimizer_step(terms["loss"], run.trained, run.optimizer, run.scaler, optim.clip_grad_norm)
    run.monitors.after_step(labels)
    if run.teacher is not None:
        run.teacher.update(run.model, float(run.schedules["momentum"][run.step]))
    run.step += 1
    run.bar.update(1)
    return terms


def log_step(run: Run, terms: dict[str, torch.Tensor], epoch: int, seconds: float, images: int) -> None:
    """The loss terms averaged over ranks (a collective), the schedules' values, the speed, the monitors."""
    names = list(terms)
    values = dict(zip(names, reduce_for_logging(torch.stack([terms[k].detach().float() for k in names])).tolist()))
    if not math.isfinite(values["loss"]):
        raise TrainingDiverged(f"loss is {values['loss']} at step {run.step}; {run.finite.last()}")
    if run.sections.data.skip_corrupt and run.env.enabled:  # rank 0 logs every rank's, at logging steps
        run.skips.publish(run.log, gather=True)
    group = run.optimizer.param_groups[0]
    record = {"kind": "train", "stage": run.method.stage(run.step), "step": run.step, "epoch": epoch, **values,
              "lr": group["lr"], "weight_decay": group["weight_decay"],
              "images_per_s": run.env.world_size * images / max(seconds, 1e-9), "skipped_images": run.skips.total}
    monitor_records = run.monitors.at_logging_step(run.step, epoch)  # collective
    if run.log is not None:
        for written in (record, *monitor_records):
            run.log.write(written)
    run.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.3g}", img_s=f"{record['images_per_s']:.0f}")


def train_one_epoch(run: Run, epoch: int) -> None:
    """The steps of ``epoch`` from where the run stands, to the epoch's end or the run's stop."""
    train = run.sections.train
    run.sampler.set_epoch(epoch, run.step - epoch * run.steps_per_epoch)
    window_start, window_images = time.perf_counter(), 0
    for batch in run.loader:
        views, labels, indices = batch_views(run, batch)
        terms = train_step(run, views, labels, indices)
        window_images += views[0].shape[0]
        if run.step % train.log_every == 0 or run.step == run.stop_at:
            log_step(run, terms, epoch, time.perf_counter() - window_start, window_images)
            window_start, window_images = time.perf_counter(), 0
        if train.checkpoint_every and run.step % train.checkpoint_every == 0:
            save_training_checkpoint(run)
        if run.step >= run.stop_at:
            break


def end_epoch(run: Run, epoch: int) -> None:
    """At an epoch's end (or the run's stop): the kNN monitor, then the checkpoint, so that a run killed
    while the monitor runs repeats the epoch and its monitor."""
    finished_epoch = run.step % run.steps_per_epoch == 0
    knn_record = run.monitors.at_epoch_end(run.step, run.step // run.steps_per_epoch) if finished_epoch else None
    if knn_record is not None and run.log is not None:
        run.log.write(knn_record)
    save_training_checkpoint(run)
    if run.sections.data.skip_corrupt and run.env.enabled:
        run.skips.publish(run.log, gather=True)
    if run.log is not None:
        run.log.write({"kind": "epoch", "step": run.step, "epoch": epoch, "skipped_images": run.skips.total})


def finish(run: Run) -> dict[str, Any]:
    """The backbones exported and, once the run is complete, evaluated and plotted (rank 0 only)."""
    result: dict[str, Any] = {"step": run.step, "finished": run.step >= run.total_steps, "main": run.env.is_main}
    if not run.env.is_main:
        return result
    export_backbones(run.output_dir, run.model, run.teacher, run.finite, run.step)
    cfg = run.cfg
    if result["finished"] and cfg["eval"]["enabled"]:
        metrics = evaluate_clusters(run.model, EndOfRunEval.from_config(cfg), run.device, run.amp_dtype)
        atomic_write(os.path.join(run.output_dir, METRICS), lambda f: json.dump(metrics, f, indent=2),
                     binary=False)
        run.log.write({"kind": "eval", "step": run.step, **{k: v for k, v in metrics.items() if k != "baseline"}})
        result["metrics"] = metrics
    run.log.close()
    if result["finished"]:
        plot_training_curves(run.log.path, os.path.join(run.output_dir, CURVES))
    return result


def _run(cfg: dict[str, Any], output_dir: str, device: torch.device, env: DistEnv, max_steps: int | None,
         cleanup: contextlib.ExitStack) -> dict[str, Any]:
    # ---- build: data, model, objective, optimiser, schedules ----
    run = build_run(cfg, output_dir, device, env)
    # ---- resume, then the log and the monitors, then the model wrapped for several ranks ----
    changes = resume(run)
    start_reporting(run, changes, max_steps, cleanup)
    prepare_training(run)
    # ---- train ----
    while run.step < run.stop_at:
        epoch = run.step // run.steps_per_epoch
        train_one_epoch(run, epoch)
        if run.step % run.steps_per_epoch == 0 or run.step >= run.stop_at:
            end_epoch(run, epoch)
    run.bar.close()
    # ---- finish: export, evaluation ----
    return finish(run)
