"""Unsupervised classification: each image's class is the argmax of the TWIST head."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from twist.eval.metrics import cluster_metrics


@torch.no_grad()
def predict(model, loader, device: torch.device, autocast_dtype: torch.dtype | None = None):
    """Return (predicted classes, true labels, flattened inputs) over ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    preds, labels, pixels = [], [], []
    for images, targets, _ in loader:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model([images.to(device, non_blocking=True)])[0]
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(targets)
        pixels.append(images.flatten(1))
    model.train(was_training)
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(pixels).numpy()


def kmeans_baseline(pixels: np.ndarray, labels: np.ndarray, num_clusters: int, seed: int) -> dict[str, Any]:
    """k-means on the evaluation images' raw pixels: what clustering without learning reaches."""
    from sklearn.cluster import KMeans

    preds = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit_predict(pixels)
    return {"method": "kmeans on raw pixels", **cluster_metrics(labels, preds)}


def evaluate_clusters(model, loader, device: torch.device, num_classes: int, seed: int,
                      autocast_dtype: torch.dtype | None = None, kmeans: bool = False) -> dict[str, Any]:
    preds, labels, pixels = predict(model, loader, device, autocast_dtype)
    result: dict[str, Any] = {**cluster_metrics(labels, preds), "num_samples": int(len(labels)),
                              "num_clusters_used": int(len(np.unique(preds))), "num_classes": num_classes}
    if kmeans:
        result["baseline"] = kmeans_baseline(pixels, labels, int(len(np.unique(labels))), seed)
    return result
