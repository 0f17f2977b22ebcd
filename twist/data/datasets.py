"""Image sources (folder, digits, synthetic) and the wrappers that turn them into training views.

A source yields ``(PIL image, label)`` by index. ``ViewsDataset`` augments a source into views with
randomness seeded from (seed, epoch, index); ``EvalDataset`` applies a deterministic transform.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(RuntimeError):
    """A dataset that is missing, empty or laid out differently from what was documented."""


class CorruptImageError(RuntimeError):
    """An image file that exists but cannot be decoded; ``location`` is its path (or its LMDB record)."""

    def __init__(self, message: str, location: str = ""):
        super().__init__(message)
        self.location = location


class ImageFolderSource:
    """``root/<class>/<image>`` with classes numbered in sorted order, as torchvision's ImageFolder."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DatasetError(f"image folder '{root}' does not exist or is not a directory")
        self.root = root
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise DatasetError(f"image folder '{root}' has no class sub-folders (expected {root}/<class>/<image>)")
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            class_dir = os.path.join(root, name)
            for dirpath, _, files in sorted(os.walk(class_dir, followlinks=True)):
                for file in sorted(files):
                    if file.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, file), label))
        self.labelled = True
        if not self.samples:
            raise DatasetError(f"image folder '{root}' has class folders but no images with extensions "
                               f"{', '.join(IMAGE_EXTENSIONS)}")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), label
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise CorruptImageError(f"cannot read image '{path}': {err}", location=path) from None


def decode_image(data: bytes, where: str, location: str = "") -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise CorruptImageError(f"cannot read image {where}: {err}", location=location) from None


UNLABELLED = -1


class FileListSource:
    """Images named in a text file, one ``<path> <integer label>`` per line; paths relative to ``root``.

    A list whose lines are all a bare ``<path>`` is unlabelled (fine for pretraining; the evaluation
    protocols that need labels refuse it). Mixing the two forms is an error.
    """

    def __init__(self, root: str, list_file: str):
        list_path = list_file if os.path.isabs(list_file) else os.path.join(root, list_file)
        if not os.path.isfile(list_path):
            raise DatasetError(f"image list '{list_path}' does not exist")
        self.samples: list[tuple[str, int]] = []
        with open(list_path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                parts = line.rsplit(maxsplit=1)
                labelled = len(parts) == 2 and parts[1].isdigit()
                if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not labelled:
                    raise DatasetError(f"{list_path}, line {number}: labels must be integers >= 0, "
                                       f"got {parts[1]!r}")
                if self.samples and labelled != (self.samples[-1][1] != UNLABELLED):
                    expected = "'<path> <integer label>'" if not labelled else "'<path>' alone"
                    raise DatasetError(f"{list_path}, line {number}: expected {expected} like the lines before it "
                                       f"(a list is either all labelled or all unlabelled), got {line.rstrip()!r}")
                name = parts[0] if labelled else line.strip()
                path = name if os.path.isabs(name) else os.path.join(root, name)
                self.samples.append((path, int(parts[1]) if labelled else UNLABELLED))
        if not self.samples:
            raise DatasetError(f"image list '{list_path}' names no images")
        self.labelled = self.samples[0][1] != UNLABELLED
        self.classes = [str(c) for c in sorted({label for _, label in self.samples})] if self.labelled else []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise CorruptImageError(f"cannot read image '{path}': {err}", location=path) from None
        return decode_image(data, f"'{path}'", location=path), label


LMDB_LENGTH_KEY = b"__len__"
LMDB_CLASSES_KEY = b"__classes__"


def lmdb_record_key(index: int) -> bytes:
    return f"{index:010d}".encode()


def encode_lmdb_record(image_bytes: bytes, label: int) -> bytes:
    """A record is the label as 8 little-endian bytes, then the encoded image file, unchanged."""
    return int(label).to_bytes(8, "little", signed=True) + image_bytes


class LMDBSource:
    """An LMDB written by ``tools/build_lmdb.py``; its length and class names are read from the database.

    The environment is opened lazily in each process (an LMDB handle must not cross a fork), read-only
    and without locking, so any number of data-loader workers can read it.
    """

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise DatasetError(f"LMDB '{path}' does not exist")
        self.path = path
        self._env, self._pid = None, None
        with self._open().begin() as txn:
            length, classes = txn.get(LMDB_LENGTH_KEY), txn.get(LMDB_CLASSES_KEY)
        if length is None:
            raise DatasetError(f"LMDB '{path}' has no '{LMDB_LENGTH_KEY.decode()}' entry; "
                               f"build it with tools/build_lmdb.py")
        self.length = int(length)
        self.classes = json.loads(classes) if classes else []
        self.labelled = True
        self._env.close()
        self._env = None

    def _open(self):
        import lmdb

        if self._env is None or self._pid != os.getpid():
            try:
                self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False,
                                      subdir=os.path.isdir(self.path), max_readers=512)
            except lmdb.Error as err:
                raise DatasetError(f"LMDB '{self.path}' cannot be opened: {err}") from None
            self._pid = os.getpid()
        return self._env

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[Image.Image, int]:
        with self._open().begin() as txn:
            record = txn.get(lmdb_record_key(index))
        where = f"record {index} of LMDB '{self.path}'"
        if record is None or len(record) < 8:
            raise CorruptImageError(f"cannot read image {where}: the record is missing or truncated", location=where)
        label = int.from_bytes(record[:8], "little", signed=True)
        return decode_image(record[8:], where, location=where), label

    def read_labels(self) -> np.ndarray:
        """Every record's label, read from the records' first 8 bytes without decoding the images."""
        labels = np.empty(self.length, dtype=np.int64)
        with self._open().begin() as txn:
            for index in range(self.length):
                record = txn.get(lmdb_record_key(index))
                if record is None or len(record) < 8:
                    raise CorruptImageError(f"record {index} of LMDB '{self.path}' is missing or truncated")
                labels[index] = int.from_bytes(record[:8], "little", signed=True)
        return labels

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None  # workers open their own handle
        return state


DIGITS_VAL_EVERY = 5


class DigitsSource:
    """scikit-learn's bundled 8x8 handwritten digits, as 8-bit grayscale.

    Splits: ``all`` (the 1,797 images in the bundled order), and a fixed stratified ``train``/``val``
    partition of them: within each class, in the bundled order, every fifth image (the 5th, 10th,
    ...) is in ``val`` (355 images) and the others in ``train`` (1,442).
    """

    classes = [str(d) for d in range(10)]
    labelled = True

    def __init__(self, split: str = "all"):
        from sklearn.datasets import load_digits

        if split not in ("all", "train", "val"):
            raise DatasetError(f"the digits set has splits 'all', 'train' and 'val', not '{split}'")
        digits = load_digits()
        targets = digits.target.astype(np.int64)
        position_in_class = np.zeros(len(targets), dtype=np.int64)
        for label in np.unique(targets):
            members = np.flatnonzero(targets == label)
            position_in_class[members] = np.arange(len(members))
        in_val = position_in_class % DIGITS_VAL_EVERY == DIGITS_VAL_EVERY - 1
        keep = {"all": np.ones_like(in_val), "train": ~in_val, "val": in_val}[split]
        # Pixel values are 0..16; spread them over 0..255.
        self.images = np.clip(np.round(digits.images[keep] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        self.labels = targets[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index], mode="L"), int(self.labels[index])


class SyntheticSource:
    """Small RGB images of class-specific coloured blobs plus noise, made from a seed; for tests.

    The ``val`` split has ``num_samples // 4`` (at least one) new images of the same classes: the
    class prototypes come from ``seed``, the val images' labels and noise from a separate stream.
    """

    labelled = True

    def __init__(self, num_samples: int, num_classes: int, image_size: int, seed: int = 0, split: str = "train"):
        if split not in ("train", "val"):
            raise DatasetError(f"the synthetic set has splits 'train' and 'val', not '{split}'")
        self.classes = [f"class_{c}" for c in range(num_classes)]
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, num_classes, size=num_samples)
        centres = rng.uniform(0.2, 0.8, size=(num_classes, 2))
        colours = rng.uniform(0, 255, size=(num_classes, 3))
        if split == "val":
            rng = np.random.default_rng([seed, 1])
            labels = rng.integers(0, num_classes, size=max(1, num_samples // 4))
        self.labels = labels
        yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
        self.images = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
        for i, label in enumerate(self.labels):
            cy, cx = centres[label] + rng.normal(0, 0.05, size=2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)[..., None]
            img = blob * colours[label] + (1 - blob) * 40 + rng.normal(0, 10, size=(image_size, image_size, 3))
            self.images[i] = np.clip(img, 0, 255).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index], mode="RGB"), int(self.labels[index])


@dataclass(frozen=True)
class SourceConfig:
    """The keys of ``data`` that say which images a split holds, which pretraining and evaluation configs
    share, and the run's ``seed``, from which the synthetic set is drawn."""

    dataset: str
    path: str
    list_file: str
    val_list_file: str
    image_size: int
    num_samples: int
    num_classes: int
    seed: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SourceConfig:
        data = cfg["data"]
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name != "seed"}, seed=cfg["seed"])


def build_source(source: SourceConfig, split: str = "train"):
    """The image source of ``source`` for ``split``.

    A folder reads ``<path>/<split>/<class>/<image>``, an LMDB ``<path>/<split>.lmdb``, a file list
    ``data.list_file`` ('train') or ``data.val_list_file`` ('val'); digits ('all', 'train', 'val')
    and synthetic ('train', 'val') have their splits built in.
    """
    if source.dataset == "folder":
        root = os.path.join(source.path, split)
        if not os.path.isdir(root):
            raise DatasetError(f"image folder '{root}' does not exist; data.path must hold "
                               f"train/<class>/<image> and val/<class>/<image> (ImageNet layout)")
        return ImageFolderSource(root)
    if source.dataset == "filelist":
        if split not in ("train", "val"):
            raise DatasetError(f"the file-list dataset has splits 'train' (data.list_file) and 'val' "
                               f"(data.val_list_file), not '{split}'")
        list_file = source.list_file if split == "train" else source.val_list_file
        if not list_file:
            raise DatasetError("the file-list dataset has no 'val' split: set data.val_list_file")
        return FileListSource(source.path, list_file)
    if source.dataset == "lmdb":
        return LMDBSource(os.path.join(source.path, f"{split}.lmdb"))
    if source.dataset == "digits":
        return DigitsSource(split)
    if source.dataset == "synthetic":
        return SyntheticSource(source.num_samples, source.num_classes, source.image_size, seed=source.seed,
                               split=split)
    raise DatasetError(f"unknown data.dataset '{source.dataset}'")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ViewsDataset(torch.utils.data.Dataset):
    """Training items ``(views, label, index)``, keyed by ``(epoch, index)`` from ``EpochSampler``.

    The epoch travels with the key rather than living on the dataset so that persistent workers
    see it too. ``later_stages`` lists ``(first_epoch, transform)`` pairs that replace ``transform``
    from that epoch on (the self-labeling crops), so the views stay a pure function of the epoch and
    a resumed run gets the right ones. A corrupt image raises, or gives a :class:`SkippedImage`
    (dropped by the collate function, which hands it on) when ``skip_corrupt`` is set.
    """

    def __init__(self, source, transform: Callable[[Image.Image], list[torch.Tensor]], seed: int,
                 skip_corrupt: bool = False,
                 later_stages: list[tuple[int, Callable[[Image.Image], list[torch.Tensor]]]] = ()):
        self.source, self.transform, self.seed, self.skip_corrupt = source, transform, seed, skip_corrupt
        self.later_stages = sorted(later_stages, key=lambda stage: stage[0])

    def transform_for_epoch(self, epoch: int) -> Callable[[Image.Image], list[torch.Tensor]]:
        transform = self.transform
        for first_epoch, later in self.later_stages:
            if epoch >= first_epoch:
                transform = later
        return transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        try:
            img, label = self.source.load(index)
        except CorruptImageError as err:
            if self.skip_corrupt:
                return SkippedImage(err.location or f"item {index} of the dataset", str(err))
            raise
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a seed for each lazily initialised
            # accelerator module and formats a stack trace for each (75 us an item; an augment.on_device
            # worker spends about 1.2 ms on an item)
            torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            views = self.transform_for_epoch(epoch)(img)
        return views, label, index


class EvalDataset(torch.utils.data.Dataset):
    """Evaluation items ``(image, label, index)`` under a deterministic transform."""

    def __init__(self, source, transform: Callable[[Image.Image], torch.Tensor]):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        img, label = self.source.load(index)
        return self.transform(img), label, index


@dataclass(frozen=True)
class SkippedImage:
    """An unreadable image that ``skip_corrupt`` dropped: its path (or LMDB record) and the error."""

    location: str
    error: str


def split_skipped(items: list) -> tuple[list, list[SkippedImage]]:
    """The readable items of a batch, and the skipped ones, which travel back from the workers with it."""
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    return [item for item in items if not isinstance(item, SkippedImage)], skipped


def collate_views(items: list):
    """``(views, labels, indices, skipped)``: views stacked per position, skipped images listed.

    When every item was skipped, the views, labels and indices are None.
    """
    kept, skipped = split_skipped(items)
    if not kept:
        return None, None, None, skipped
    num_views = len(kept[0][0])
    views = [torch.stack([item[0][v] for item in kept]) for v in range(num_views)]
    labels = torch.tensor([item[1] for item in kept])
    indices = torch.tensor([item[2] for item in kept])
    return views, labels, indices, skipped
