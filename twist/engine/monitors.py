"""Health monitors of a pretraining run (``monitor.*``), both off by default and neither changing training.

- The kNN monitor: every ``monitor.knn_every`` epochs, the classifier of ``twist-eval knn`` (the same
  feature extraction, sharded over the ranks and gathered, and the same weighted vote) on the current
  backbone, in eval mode under no grad, so that no batch-norm statistic moves. At most
  ``monitor.max_train_images`` / ``max_val_images`` evenly spaced images of each split bound its cost.
- The online linear probe (as solo-learn's): a linear layer on the detached pooled backbone features of
  the first global view, trained by its own SGD on the training images' labels; its accuracy on each
  batch, before the batch's update, is summed over the ranks between two logging steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from twist.config import ConfigError
from twist.data import DatasetError, EvalDataset, SourceConfig, build_source
from twist.data.loader import DataConfig
from twist.data.transforms import eval_transform
from twist.distributed import DistEnv
from twist.eval.config import EVAL_DEFAULTS
from twist.eval.features import FeatureExtractor, collective_device, extract_features
from twist.eval.knn import knn_correct
from twist.eval.linear import num_classes_of
from twist.sections import read_section


@dataclass(frozen=True)
class MonitorConfig:
    """``monitor``: the kNN monitor's period, splits, image limits and classifier, and the online probe's SGD."""

    knn_every: int
    train_split: str
    val_split: str
    max_train_images: int
    max_val_images: int
    k: int
    temperature: float
    batch_size: int
    probe: bool
    probe_lr: float
    probe_momentum: float
    probe_weight_decay: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MonitorConfig:
        return read_section(cls, cfg["monitor"])


class EvenlySpaced(Dataset):
    """At most ``limit`` evenly spaced items of ``dataset`` (all with ``limit`` 0), re-indexed from 0."""

    def __init__(self, dataset: Dataset, limit: int):
        size = len(dataset)
        self.dataset = dataset
        self.positions = list(range(size)) if not limit or limit >= size else [i * size // limit for i in range(limit)]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        image, label, _ = self.dataset[self.positions[index]]
        return image, label, index


def labelled_source(images: SourceConfig, split: str, key: str):
    try:
        source = build_source(images, split)
    except DatasetError as err:
        raise DatasetError(f"{key}='{split}': {err}") from None
    if not getattr(source, "labelled", True):
        raise DatasetError(f"{key}='{split}': the split of data.dataset={images.dataset} has no labels (a "
                           f"file list of bare paths); the monitor needs '<path> <integer label>' lines")
    return source


class KNNMonitor:
    """``twist-eval knn`` on the backbone being trained, at the end of every ``monitor.knn_every``-th epoch."""

    def __init__(self, monitor: MonitorConfig, data: DataConfig, pipeline: str, backbone: nn.Module, family: str,
                 feature_dim: int, device: torch.device, env: DistEnv, autocast_dtype: torch.dtype | None):
        self.every, self.k, self.temperature = monitor.knn_every, monitor.k, monitor.temperature
        self.batch_size, self.num_workers = monitor.batch_size, data.num_workers
        self.device, self.env, self.autocast_dtype = device, env, autocast_dtype
        # twist-eval's own defaults, so that the figure is that of twist-eval knn on a checkpoint of this step.
        features = EVAL_DEFAULTS["features"]
        self.extractor = FeatureExtractor(backbone, family, feature_dim,
                                          features["vit_last_blocks"] if family == "vit" else 1,
                                          features["vit_avgpool"] and family == "vit")
        transform = eval_transform(pipeline, data.source.image_size, EVAL_DEFAULTS["augment"]["interpolation"])
        train_source = labelled_source(data.source, monitor.train_split, "monitor.train_split")
        val_source = labelled_source(data.source, monitor.val_split, "monitor.val_split")
        self.train_set = EvenlySpaced(EvalDataset(train_source, transform), monitor.max_train_images)
        self.val_set = EvenlySpaced(EvalDataset(val_source, transform), monitor.max_val_images)
        self.train_source = train_source

    def due(self, epochs_done: int) -> bool:
        return epochs_done > 0 and epochs_done % self.every == 0

    def __call__(self, step: int, epoch: int) -> dict[str, Any]:
        """The monitor's record at ``step``; a collective: every rank calls it."""
        start = time.perf_counter()
        backbone = self.extractor.backbone
        was_training = backbone.training
        extract = dict(batch_size=self.batch_size, num_workers=self.num_workers, device=self.device, env=self.env,
                       autocast_dtype=self.autocast_dtype)
        train_feats, train_labels = extract_features(self.extractor, self.train_set, **extract)
        val_feats, val_labels = extract_features(self.extractor, self.val_set, **extract)
        backbone.train(was_training)
        num_classes = num_classes_of(self.train_source, train_labels)
        mine = slice(self.env.rank, None, self.env.world_size)  # each rank classifies a share of the queries
        top1, top5 = knn_correct(train_feats.to(self.device), train_labels.to(self.device), val_feats[mine],
                                 val_labels[mine], num_classes, self.k, self.temperature,
                                 EVAL_DEFAULTS["knn"]["query_batch_size"])
        counts = torch.tensor([top1, top5], dtype=torch.long)
        if self.env.enabled:
            counts = counts.to(collective_device())
            dist.all_reduce(counts)
            counts = counts.cpu()
        return {"kind": "monitor", "monitor": "knn", "step": step, "epoch": epoch,
                "knn_top1": int(counts[0]) / len(self.val_set), "knn_top5": int(counts[1]) / len(self.val_set),
                "k": self.k, "temperature": self.temperature, "num_train": len(self.train_set),
                "num_val": len(self.val_set), "seconds": time.perf_counter() - start}


def classes_of(source, declared: int) -> int:
    """The number of classes of the training source, from its class names or its labels; else ``declared``
    (``data.num_classes``)."""
    labels = getattr(source, "labels", None)
    if labels is None and hasattr(source, "samples"):
        labels = [label for _, label in source.samples]
    found = int(max(labels)) + 1 if labels is not None and len(labels) else 0
    return max(len(getattr(source, "classes", ())), found) or declared


class OnlineProbe:
    """A linear classifier on the detached backbone features of the first global view of each batch.

    A forward hook on the backbone keeps the first output of the step's forward (the batch's first
    rows are the first view's); the probe then takes its own SGD step outside the model's graph, with
    gradients averaged over the ranks, so that every rank holds the same probe.
    """

    def __init__(self, monitor: MonitorConfig, seed: int, backbone: nn.Module, feature_dim: int, num_classes: int,
                 device: torch.device, env: DistEnv):
        self.env, self.device = env, device
        # Its own generator: drawing the probe's weights leaves the global stream (dropout) untouched.
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(feature_dim)
        self.linear = nn.Linear(feature_dim, num_classes, device="meta").to_empty(device=device)
        with torch.no_grad():
            for param in self.linear.parameters():
                param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=monitor.probe_lr,
                                         momentum=monitor.probe_momentum, weight_decay=monitor.probe_weight_decay)
        self._rows = 0  # the rows of the next backbone output to keep; 0: keep nothing
        self._features: torch.Tensor | None = None
        self._totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, images
        self._hook = backbone.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._rows:
            self._features = output[: self._rows].detach().float().clone()
            self._rows = 0

    def expect_features(self, batch_size: int) -> None:
        """Keep the first ``batch_size`` rows of the backbone's next output (the step's forward)."""
        self._rows, self._features = batch_size, None

    def step(self, labels: torch.Tensor) -> None:
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError("the online probe saw no backbone output in this training step")
        labels = labels.to(self.device)
        logits = self.linear(features)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.env.enabled:
            for param in self.linear.parameters():
                dist.all_reduce(param.grad)
                param.grad /= self.env.world_size
        self.optimizer.step()
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == labels).sum()
            self._totals += torch.stack([correct.double(), loss.detach().double() * len(labels),
                                         torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device)])

    def record(self, step: int, epoch: int) -> dict[str, Any] | None:
        """The accuracy since the last record, over every rank's images; a collective."""
        totals, self._totals = self._totals, torch.zeros_like(self._totals)
        if self.env.enabled:
            totals = totals.to(collective_device())
            dist.all_reduce(totals)
        correct, loss_sum, images = totals.tolist()
        if not images:
            return None
        return {"kind": "monitor", "monitor": "probe", "step": step, "epoch": epoch, "probe_top1": correct / images,
                "probe_loss": loss_sum / images, "images": int(images)}

    def close(self) -> None:
        self._hook.remove()


class RunMonitors:
    """The monitors ``monitor.*`` asks for, as the calls the training loop makes; each a no-op when off."""

    def __init__(self, monitor: MonitorConfig, data: DataConfig, pipeline: str, model: nn.Module, train_source,
                 device: torch.device, env: DistEnv, autocast_dtype: torch.dtype | None):
        feature_dim = backbone_feature_dim(model)
        self.knn = (KNNMonitor(monitor, data, pipeline, model.backbone, model.family, feature_dim, device, env,
                               autocast_dtype) if monitor.knn_every else None)
        self.probe = None
        if monitor.probe:
            if not getattr(train_source, "labelled", True):
                raise ConfigError(f"monitor.probe trains on the labels of data.train_split='{data.train_split}', "
                                  f"which has none (a file list of bare paths); give '<path> <integer label>' "
                                  f"lines or set monitor.probe=false")
            num_classes = classes_of(train_source, data.source.num_classes)
            self.probe = OnlineProbe(monitor, data.source.seed, model.backbone, feature_dim, num_classes, device, env)

    def expect_features(self, batch_size: int) -> None:
        if self.probe is not None:
            self.probe.expect_features(batch_size)

    def after_step(self, labels: torch.Tensor) -> None:
        if self.probe is not None:
            self.probe.step(labels)

    def at_logging_step(self, step: int, epoch: int) -> list[dict[str, Any]]:
        record = self.probe.record(step, epoch) if self.probe is not None else None
        return [record] if record is not None else []

    def at_epoch_end(self, step: int, epochs_done: int) -> dict[str, Any] | None:
        if self.knn is None or not self.knn.due(epochs_done):
            return None
        # A DataLoader draws its workers' base seed from the global CPU stream, which dropout also reads.
        with torch.random.fork_rng(devices=[]):
            return self.knn(step, epochs_done - 1)

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def backbone_feature_dim(model: nn.Module) -> int:
    """The width of the pooled backbone output: what the first linear layer of every method's head takes."""
    return next(m for m in model.head.modules() if isinstance(m, nn.Linear)).in_features
