"""Unsupervised classification: each image's class is the argmax of the TWIST head.

Protocol. The model runs in eval mode (NBS uses its running statistics) on the deterministic
evaluation view of every val image, each image once (ranks take disjoint shards). Scores:

- ``nmi``, ``ami``, ``ari``: scikit-learn's, between the predicted cluster and the true class;
- ``acc``: accuracy under the one-to-one Hungarian matching of clusters to classes; with more
  clusters than classes the unmatched clusters count as wrong (the strict figure of the papers);
- ``acc_majority``: accuracy when each cluster is read as its majority class (many-to-one);
- ``acc_top5``: the class is among the image's five most probable clusters, read through the
  Hungarian matching (as the reference's top-5 ACC).

Class names for the figures come from :func:`twist.eval.metrics.cluster_to_class`: the Hungarian
match, and for clusters it leaves unmatched, their majority class (marked with ``*``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from twist.atomic import atomic_write
from twist.data import EvalDataset, SourceConfig, build_source
from twist.data.transforms import eval_transform
from twist.distributed import DistEnv
from twist.eval.features import extract_features
from twist.eval.metrics import (
    cluster_metrics,
    cluster_to_class,
    hungarian_matching,
    majority_accuracy,
    mapped_topk_accuracy,
)

TOP_K = 5


class TopClusters(nn.Module):
    """The ``k`` most probable clusters of each image and their probabilities, as one
    ``(batch, 2k)`` tensor (ids first, as floats, which hold integers exactly up to 2^24)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = self.model([images])[0].float().softmax(dim=1)
        top = probs.topk(min(self.k, probs.shape[1]), dim=1)
        return torch.cat([top.indices.float(), top.values], dim=1)


def predict_clusters(model: nn.Module, dataset, batch_size: int, num_workers: int, device: torch.device,
                     env: DistEnv = DistEnv(), autocast_dtype: torch.dtype | None = None,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-k cluster ids, their probabilities, true labels) of every item of ``dataset``, in order."""
    out, labels = extract_features(TopClusters(model, TOP_K), dataset, batch_size, num_workers, device, env,
                                   autocast_dtype, progress, desc="head predictions")
    k = out.shape[1] // 2
    return out[:, :k].round().long().numpy(), out[:, k:].numpy(), labels.numpy()


def cluster_report(labels: np.ndarray, top_ids: np.ndarray, num_clusters: int) -> dict[str, Any]:
    preds = top_ids[:, 0]
    result: dict[str, Any] = {**cluster_metrics(labels, preds), "acc_majority": majority_accuracy(labels, preds)}
    if top_ids.shape[1] >= TOP_K:
        result["acc_top5"] = mapped_topk_accuracy(labels, top_ids[:, :TOP_K], hungarian_matching(labels, preds))
    result.update({"num_samples": int(len(labels)), "num_classes": int(len(np.unique(labels))),
                   "num_clusters": num_clusters, "num_clusters_used": int(len(np.unique(preds)))})
    return result


def kmeans_baseline(dataset, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """k-means on the evaluation images' raw pixels: what clustering without learning reaches."""
    from sklearn.cluster import KMeans

    pixels = np.stack([dataset[i][0].flatten().numpy() for i in range(len(dataset))])
    preds = KMeans(n_clusters=int(len(np.unique(labels))), n_init=10, random_state=seed).fit_predict(pixels)
    return {"method": "kmeans on raw pixels", **cluster_metrics(labels, preds)}


@dataclass(frozen=True)
class EndOfRunEval:
    """``eval``, with what the end-of-run evaluation reads from the rest of a pretraining config: the
    data source, the evaluation view's pipeline and size, the loader's workers, the head's C, the seed."""

    split: str
    batch_size: int
    kmeans_baseline: bool
    source: SourceConfig
    pipeline: str
    image_size: int
    num_workers: int
    num_clusters: int
    seed: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EndOfRunEval:
        e = cfg["eval"]
        return cls(e["split"], e["batch_size"], e["kmeans_baseline"], SourceConfig.from_config(cfg),
                   cfg["augment"]["pipeline"], cfg["data"]["image_size"], cfg["data"]["num_workers"],
                   cfg["model"]["head"]["num_classes"], cfg["seed"])


def evaluate_clusters(model: nn.Module, section: EndOfRunEval, device: torch.device,
                      autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The cluster metrics of a pretraining run's model on its ``eval.split`` (the end-of-run evaluation;
    ``twist-eval cluster`` computes the same figures)."""
    dataset = EvalDataset(build_source(section.source, section.split),
                          eval_transform(section.pipeline, section.image_size))
    top_ids, _, labels = predict_clusters(model, dataset, section.batch_size, section.num_workers, device,
                                          autocast_dtype=autocast_dtype)
    result = cluster_report(labels, top_ids, section.num_clusters)
    if section.kmeans_baseline:
        result["baseline"] = kmeans_baseline(dataset, labels, section.seed)
    return result


def _class_name(source, cls: int) -> str:
    classes = getattr(source, "classes", [])
    return str(classes[cls]) if 0 <= cls < len(classes) else str(cls)


def plot_prediction_grid(source, indices: np.ndarray, top_ids: np.ndarray, top_probs: np.ndarray,
                         mapping: dict[int, int], matched: set[int], columns: int, path: str) -> None:
    """Example images, each titled with its three most probable classes (clusters named through
    ``mapping``; ``*`` marks a cluster named by its majority class) and their probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(indices) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, indices):
        image, label = source.load(int(index))
        ax.imshow(image, cmap="gray" if image.mode == "L" else None)
        lines = []
        for cluster, prob in zip(top_ids[index, :3], top_probs[index, :3]):
            cluster = int(cluster)
            name = _class_name(source, mapping[cluster]) if cluster in mapping else f"cluster {cluster}"
            star = "" if cluster in matched or cluster not in mapping else "*"
            lines.append(f"{name}{star} {prob:.2f}")
        ax.set_title("\n".join(lines), fontsize=7,
                     color="green" if mapping.get(int(top_ids[index, 0])) == label else "red")
    fig.suptitle("top-3 predicted classes (green: top-1 right)", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_confusion(labels: np.ndarray, preds: np.ndarray, mapping: dict[int, int], source, path: str) -> None:
    """Row-normalised confusion matrix of true classes against predicted clusters read as classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_classes = max(int(labels.max()) + 1, len(getattr(source, "classes", [])))
    predicted = np.array([mapping.get(int(p), -1) for p in preds])
    matrix = np.zeros((num_classes, num_classes + 1))  # last column: clusters named by no class
    np.add.at(matrix, (labels, np.where(predicted >= 0, predicted, num_classes)), 1)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    if not matrix[:, -1].any():
        matrix = matrix[:, :-1]
    size = min(12.0, 3 + 0.35 * num_classes)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if num_classes <= 30:
        names = [_class_name(source, c) for c in range(num_classes)]
        ax.set_yticks(range(num_classes), names)
        ax.set_xticks(range(matrix.shape[1]), names + (["none"] if matrix.shape[1] > num_classes else []),
                      rotation=90)
        for (i, j), value in np.ndenumerate(matrix):
            if value >= 0.01:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if value > 0.5 else "black")
    ax.set_xlabel("predicted (cluster read as class)")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def run_cluster(session) -> dict[str, Any]:
    """``twist-eval cluster``: the head's argmax as a classifier of the val split, with figures."""
    from twist.eval.session import require_full_checkpoint
    from twist.methods import build_method
    from twist.models import BackboneConfig, build_model
    from twist.models.pretrained import load_into

    cfg, env, device = session.cfg, session.env, session.device
    state, pretrain_cfg = require_full_checkpoint(session)
    model = build_model(BackboneConfig.from_config(pretrain_cfg), build_method(pretrain_cfg))
    load_into(model, state, session.weights.path)
    model.to(device)
    source = session.source(cfg["cluster"]["split"])
    dataset = session.eval_dataset(source)
    top_ids, top_probs, labels = predict_clusters(model, dataset, cfg["features"]["batch_size"],
                                                  cfg["data"]["num_workers"], device, env, session.autocast_dtype,
                                                  cfg["progress_bar"])
    num_clusters = pretrain_cfg["model"]["head"]["num_classes"]
    report = cluster_report(labels, top_ids, num_clusters)
    if cfg["cluster"]["kmeans_baseline"]:
        report["baseline"] = kmeans_baseline(dataset, labels, cfg["seed"])
    results = {**session.describe(), **report}
    if env.is_main:
        preds = top_ids[:, 0]
        mapping = cluster_to_class(labels, preds)
        matched = set(hungarian_matching(labels, preds))
        count = min(cfg["cluster"]["grid_images"], len(labels))
        shown = np.sort(np.random.default_rng(cfg["seed"]).choice(len(labels), size=count, replace=False))
        files = {"confusion": os.path.join(session.output_dir, "confusion.png")}
        plot_confusion(labels, preds, mapping, source, files["confusion"])
        if count:
            files["grid"] = os.path.join(session.output_dir, "predictions_grid.png")
            plot_prediction_grid(source, shown, top_ids, top_probs, mapping, matched, cfg["cluster"]["grid_columns"],
                                 files["grid"])
        mapped = np.array([mapping.get(int(p), -1) for p in preds], dtype=np.int64)
        atomic_write(os.path.join(session.output_dir, "predictions.npz"),
                     lambda f: np.savez_compressed(f, labels=labels, top_clusters=top_ids, top_probs=top_probs,
                                                   mapped=mapped))
        results["files"] = {k: os.path.basename(v) for k, v in files.items()} | {"predictions": "predictions.npz"}
    session.write_json("results.json", results)
    return results
