"""Labelled subsets for semi-supervised fine-tuning: a split file, or a seeded class-balanced fraction."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from twist.data import DatasetError


def source_labels(source) -> np.ndarray:
    """Every sample's label, without decoding images where the source allows it."""
    if hasattr(source, "labels") and not callable(source.labels):
        return np.asarray(source.labels, dtype=np.int64)
    if hasattr(source, "samples"):
        return np.asarray([label for _, label in source.samples], dtype=np.int64)
    if hasattr(source, "read_labels"):
        return source.read_labels()
    return np.asarray([source.load(i)[1] for i in range(len(source))], dtype=np.int64)


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a subset with ``round(fraction x class size)`` (at least one) samples per class.

    Each class's members are shuffled by a generator seeded from ``(seed, class)`` and the subset
    takes a prefix, so the subset depends only on the labels, the fraction and the seed (not on
    workers or ranks), and for one seed a smaller fraction is contained in a larger one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = np.random.default_rng([seed, int(cls)]).permutation(len(members))
        take = max(1, int(round(fraction * len(members))))
        chosen.append(members[order[:take]])
    return np.sort(np.concatenate(chosen))


def subset_from_file(source, path: str) -> np.ndarray:
    """Sorted indices of the images named in ``path`` (one file name per line, e.g. SimCLR's
    ``1percent.txt``: ``n01440764_10026.JPEG``), matched by file name against the source's images."""
    if not os.path.isfile(path):
        raise DatasetError(f"semisup.subset_file '{path}' does not exist")
    if not hasattr(source, "samples"):
        raise DatasetError("semisup.subset_file names image files, so it needs an image folder or a file list "
                           "(data.dataset=folder or filelist); this dataset has no file names")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DatasetError(f"semisup.subset_file '{path}' names no images")
    by_name: dict[str, int] = {}
    for index, (sample_path, _) in enumerate(source.samples):
        by_name.setdefault(os.path.basename(sample_path), index)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DatasetError(f"semisup.subset_file '{path}': {len(missing)} of {len(names)} names are not images "
                           f"of the train split, e.g. {missing[:5]}")
    return np.unique([by_name[n] for n in names])


class SubsetSource:
    """The samples of ``source`` at ``indices``, renumbered from 0."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.classes = getattr(source, "classes", [])
        self.labelled = getattr(source, "labelled", True)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return self.source.load(int(self.indices[index]))
