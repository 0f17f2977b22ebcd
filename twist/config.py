"""Run configuration: YAML files over typed defaults, dotted command-line overrides, strict checks.

Every key a run may set is declared in ``DEFAULTS`` below; its default's type is the key's type.
A key that is not declared is an error naming the closest declared one, so a misspelt option can
never be silently ignored. ``CHOICES`` and ``RANGES`` narrow the allowed values further.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from typing import Any, Callable

import yaml

from twist.atomic import atomic_write
from twist.config_error import ConfigError
from twist.methods import METHODS, method_class
from twist.models.architectures import BACKBONES
from twist.sections import section_defaults
from twist.shipped_configs import resolve_config_path, shipped_config_dir

# The keys that pretraining and evaluation configs (twist.eval.config) share, declared once.
SHARED_DATA: dict[str, Any] = {
    "dataset": "folder",
    "path": "",
    "image_size": 224,
    "num_samples": 512,
    "num_classes": 10,
    # file list only: lines "<path relative to data.path> <integer label>" (or "<path>": unlabelled).
    "list_file": "",
    # file list only: the val split, used by evaluation.
    "val_list_file": "",
    "num_workers": 8,
    "pin_memory": True,
}
SHARED_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "model.backbone": tuple(BACKBONES),
    "data.dataset": ("folder", "filelist", "lmdb", "digits", "synthetic"),
    "augment.pipeline": ("barlow", "small_gray"),
}
SHARED_RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.image_size": (8, None),
    "data.num_samples": (1, None),
    "data.num_classes": (1, None),
    "data.num_workers": (0, None),
    "augment.hflip": (0.0, 1.0),
    "augment.backdrop": (0.0, 1.0),
}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    # The objective: TWIST, or one of its two companions in the same engine.
    "method": "twist",
    "model": {
        "backbone": "resnet50",
        # 3x3 stride-1 first conv and no max-pool: keeps spatial detail for inputs of 64 px or less.
        "small_input": False,
        "drop_path_rate": 0.0,
        # ResNets: each residual block's last batch norm starts at zero (Barlow Twins' recipe).
        "zero_init_residual": False,
    },
    "data": {
        **SHARED_DATA,
        # The split pretraining reads: a folder's sub-folder, an LMDB's <split>.lmdb; digits: all, train, val.
        "train_split": "train",
        "persistent_workers": False,
        "prefetch_factor": 2,
        "skip_corrupt": False,
        # With skip_corrupt: the run stops once more than this fraction of the dataset's files were unreadable.
        "max_skipped_fraction": 0.01,
    },
    "augment": {
        "pipeline": "barlow",
        "crop_scale": [0.08, 1.0],
        "hflip": 0.5,
        "color_jitter": 0.8,
        "grayscale": 0.2,
        "blur": [1.0, 0.1],
        "solarize": [0.0, 0.2],
        "rotation": 0.0,
        # small_gray: with either above 0, the rotation is one random affine map that also shifts the view by
        # up to this fraction of its side and shears it by up to this many degrees.
        "translate": 0.0,
        "shear": 0.0,
        # small_gray: the probability that a view's strokes are made one pixel thicker or thinner (even odds).
        "stroke_width": 0.0,
        # small_gray: the probability that a view's strokes are painted in a random colour over a random
        # smooth background (twist.data.backdrop), so that the views share only the digit's shape.
        "backdrop": 0.0,
        # Multi-crop: this many extra low-resolution views, paired with both global views.
        "local_crops": 0,
        "local_size": 96,
        "local_scale": [0.05, 0.4],
        "local_blur": 0.5,
        # barlow pipeline: draw the views' parameters and decode on the workers, make the pixels on the
        # training device in batches (crops, flips, colour, blur, solarisation).
        "on_device": False,
        # on_device: workers shrink images whose longer side exceeds this before sending them.
        "on_device_max_side": 512,
    },
    "optim": {
        "name": "lars",
        "lr": 0.5,
        "bias_lr_ratio": 1.0,
        "warmup_epochs": 10,
        "final_lr_ratio": 0.001,
        "weight_decay": 1.5e-6,
        "weight_decay_end": 1.5e-6,
        "exclude_bias_and_norm": True,
        "momentum": 0.9,
        "lars_eta": 0.001,
        # twist: the reference's LARS (ratio eta|p| / (|g| + wd|p|), lr inside the momentum);
        # barlow_twins: Barlow Twins' (ratio eta|p| / |g + wd p|, lr applied after the momentum).
        "lars_rule": "twist",
        "clip_grad_norm": 0.0,
    },
    "train": {
        "epochs": 800,
        "batch_size": 256,
        "precision": "fp32",
        "log_every": 10,
        "checkpoint_every": 0,
        "progress_bar": True,
        # Backbone weights and input views in NHWC (faster convolutions on recent GPUs and CPUs).
        "channels_last": False,
        # torch.compile the backbone (state-dict keys unchanged); the first steps pay the compilation.
        "compile": False,
    },
    "eval": {
        "enabled": False,
        # The split the end-of-run evaluation reads (see data.train_split).
        "split": "val",
        "batch_size": 256,
        "kmeans_baseline": False,
    },
    # An exponential-moving-average teacher gives the targets (the ViT recipes).
    "teacher": {
        "enabled": False,
        "momentum_start": 0.996,
        "momentum_end": 1.0,
    },
    # Health monitors while pretraining runs (twist/engine/monitors.py); neither changes the training.
    "monitor": {
        # Every this many epochs, twist-eval knn's classifier on the current backbone; 0 turns it off.
        "knn_every": 0,
        # Labelled splits of data.* (the train split is the kNN's memory, the val split its queries).
        "train_split": "train",
        "val_split": "val",
        # Evenly spaced images of each split (0: all), which bounds the monitor's cost on large datasets.
        "max_train_images": 20000,
        "max_val_images": 5000,
        "k": 20,
        "temperature": 0.07,
        "batch_size": 256,
        # A linear classifier trained online on the detached pooled features of the first global view.
        "probe": False,
        "probe_lr": 0.1,
        "probe_momentum": 0.9,
        "probe_weight_decay": 0.0,
    },
    # Where a run reports besides log.jsonl and TensorBoard.
    "logging": {
        "wandb": False,
        "wandb_project": "twist",
        "wandb_entity": "",
        # offline: the run is written under the run folder's wandb/ and needs no network (wandb sync uploads it).
        "wandb_mode": "online",
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    **SHARED_CHOICES,
    "method": tuple(METHODS),
    "optim.name": ("lars", "sgd", "adam", "adamw"),
    "optim.lars_rule": ("twist", "barlow_twins"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "logging.wandb_mode": ("online", "offline"),
}

# (low, high): inclusive bounds; None means unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    **SHARED_RANGES,
    "model.drop_path_rate": (0.0, 1.0),
    "augment.on_device_max_side": (16, None),
    "data.prefetch_factor": (1, None),
    "data.max_skipped_fraction": (0.0, 1.0),
    "augment.local_crops": (0, None),
    "augment.local_size": (8, None),
    "augment.local_blur": (0.0, 1.0),
    "teacher.momentum_start": (0.0, 1.0),
    "teacher.momentum_end": (0.0, 1.0),
    "augment.color_jitter": (0.0, 1.0),
    "augment.grayscale": (0.0, 1.0),
    "augment.rotation": (0.0, 180.0),
    "augment.translate": (0.0, 0.5),
    "augment.shear": (0.0, 45.0),
    "augment.stroke_width": (0.0, 1.0),
    "optim.lr": (0.0, None),
    "optim.bias_lr_ratio": (0.0, None),
    "optim.warmup_epochs": (0, None),
    "optim.final_lr_ratio": (0.0, 1.0),
    "optim.weight_decay": (0.0, None),
    "optim.weight_decay_end": (0.0, None),
    "optim.momentum": (0.0, 1.0),
    "optim.lars_eta": (0.0, None),
    "optim.clip_grad_norm": (0.0, None),
    "train.epochs": (1, None),
    "train.batch_size": (2, None),
    "train.log_every": (1, None),
    "train.checkpoint_every": (0, None),
    "eval.batch_size": (1, None),
    "monitor.knn_every": (0, None),
    "monitor.max_train_images": (0, None),
    "monitor.max_val_images": (0, None),
    "monitor.k": (1, None),
    "monitor.temperature": (1e-6, None),
    "monitor.batch_size": (1, None),
    "monitor.probe_lr": (0.0, None),
    "monitor.probe_momentum": (0.0, 1.0),
    "monitor.probe_weight_decay": (0.0, None),
}

# Lists of probabilities with a fixed length: (length, low, high).
LIST_SHAPES: dict[str, tuple[int, float, float]] = {
    "augment.crop_scale": (2, 0.0, 1.0),
    "augment.blur": (2, 0.0, 1.0),
    "augment.solarize": (2, 0.0, 1.0),
    "augment.local_scale": (2, 0.0, 1.0),
}


def _add_method_sections() -> None:
    """Each method declares its own sections and their bounds (``twist.methods``); the schema holds them."""
    for method in METHODS.values():
        for path, section in method.sections.items():
            *parents, leaf = path.split(".")
            tree = DEFAULTS
            for part in parents:
                tree = tree[part]
            tree[leaf] = section_defaults(section)
        CHOICES.update(method.choices)
        RANGES.update(method.ranges)
        LIST_SHAPES.update(method.list_shapes)


_add_method_sections()



# The keys a resumed run may change; any other difference from the checkpoint's config is refused
# (twist-train --restart starts over instead). None of these changes the model, the objective, the
# data or its order: "any" value, or "grow" (only upwards: train.epochs lengthens the run, and the
# schedules are recomputed over the new length from the resumed step on).
RESUMABLE: dict[str, str] = {
    "device": "any",
    "train.epochs": "grow",
    "train.log_every": "any",
    "train.checkpoint_every": "any",
    "train.progress_bar": "any",
    "train.channels_last": "any",
    "train.compile": "any",
    "data.num_workers": "any",
    "data.pin_memory": "any",
    "data.persistent_workers": "any",
    "data.prefetch_factor": "any",
    "data.skip_corrupt": "any",
    "data.max_skipped_fraction": "any",
    "eval.enabled": "any",
    "eval.split": "any",
    "eval.batch_size": "any",
    "eval.kmeans_baseline": "any",
    # The monitors read the model and never write to it; a resumed run starts the probe afresh.
    "monitor.knn_every": "any",
    "monitor.train_split": "any",
    "monitor.val_split": "any",
    "monitor.max_train_images": "any",
    "monitor.max_val_images": "any",
    "monitor.k": "any",
    "monitor.temperature": "any",
    "monitor.batch_size": "any",
    "monitor.probe": "any",
    "monitor.probe_lr": "any",
    "monitor.probe_momentum": "any",
    "monitor.probe_weight_decay": "any",
    "logging.wandb": "any",
    "logging.wandb_project": "any",
    "logging.wandb_entity": "any",
    "logging.wandb_mode": "any",
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; users mean a number, as in YAML 1.2."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def read_yaml(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


class Schema:
    """The declared keys of one kind of config: defaults (whose types are the keys' types), allowed
    choices, numeric ranges, fixed-length lists, and a check of the values against each other."""

    def __init__(self, defaults: dict[str, Any], choices: dict[str, tuple[str, ...]],
                 ranges: dict[str, tuple[float | None, float | None]],
                 list_shapes: dict[str, tuple[int, float, float]],
                 consistency: Callable[[dict[str, Any], str], None] | None = None):
        self.defaults, self.choices, self.ranges, self.list_shapes = defaults, choices, ranges, list_shapes
        self.consistency = consistency
        self.leaves = _flatten(defaults)
        self.sections = {k.rsplit(".", 1)[0] for k in self.leaves if "." in k}

    def unknown_key(self, path: str, source: str) -> ConfigError:
        # Never suggest a section the key already sits in ('train' for 'train.lr').
        candidates = [c for c in list(self.leaves) + sorted(self.sections) if not path.startswith(c + ".")]
        leaf = path.rsplit(".", 1)[-1]
        # The right leaf name under the wrong section, e.g. 'train.lr' for 'optim.lr'.
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:1]
        if not close:
            close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
        if not close:  # a misspelt leaf under the wrong section
            by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
            close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"{source}: unknown config key '{path}'{hint}")

    def check_value(self, path: str, value: Any, source: str) -> Any:
        """Return ``value`` converted to the declared type of ``path``, or raise ConfigError."""
        default = self.leaves[path]
        expected = type(default)
        if expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: '{path}' must be true or false, got {value!r}")
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{source}: '{path}' must be an integer, got {value!r}")
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: '{path}' must be a number, got {value!r}")
            value = float(value)
            if value != value:  # NaN passes every range check below
                raise ConfigError(f"{source}: '{path}' must be a number, got {value!r}")
        elif expected is str:
            if not isinstance(value, str):
                raise ConfigError(f"{source}: '{path}' must be a string, got {value!r}")
        elif expected is list:
            length, low, high = self.list_shapes[path]
            if (not isinstance(value, (list, tuple)) or len(value) != length
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"{source}: '{path}' must be a list of {length} numbers, got {value!r}")
            value = [float(v) for v in value]
            if not all(low <= v <= high for v in value):
                raise ConfigError(f"{source}: '{path}' values must lie in [{low}, {high}], got {value!r}")
        if path in self.choices and value not in self.choices[path]:
            raise ConfigError(f"{source}: '{path}' must be one of {', '.join(self.choices[path])}; got {value!r}")
        if path in self.ranges:
            low, high = self.ranges[path]
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                raise ConfigError(f"{source}: '{path}' must lie in {bounds}, got {value!r}")
        return value

    def merge(self, base: dict[str, Any], update: dict[str, Any], source: str, prefix: str = "") -> None:
        if not isinstance(update, dict):
            raise ConfigError(f"{source}: expected a mapping at '{prefix.rstrip('.') or '<top>'}', got {update!r}")
        for key, value in update.items():
            path = f"{prefix}{key}"
            if not isinstance(key, str) or key not in base:
                raise self.unknown_key(path, source)
            if isinstance(base[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: '{path}' is a section; expected a mapping, got {value!r}")
                self.merge(base[key], value, source, path + ".")
            else:
                base[key] = self.check_value(path, value, source)

    def parse_override(self, text: str) -> tuple[str, Any]:
        """Split ``a.b.c=value``; the value is read as YAML, so ``0.1``, ``true`` and ``[1, 2]`` are typed."""
        if "=" not in text:
            raise ConfigError(f"override '{text}' must look like dotted.key=value")
        key, raw = text.split("=", 1)
        key = key.strip()
        if isinstance(self.leaves.get(key), str):  # a path or a name: 'data.path=2024' means the text 2024
            return key, raw
        try:
            value = read_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
        return key, value

    def read_file(self, path: str) -> dict[str, Any]:
        """The mapping of sections in the YAML file at ``path``, or an error saying what the path holds instead."""
        names = [name for name, value in self.defaults.items() if isinstance(value, dict)]
        sections = ", ".join(f"{name}:"
                             for name in ([n for n in ("data", "model", "optim") if n in names] or names)[:3])
        path = resolve_config_path(path)
        if os.path.isdir(path):
            found = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")))
            inside = f" (it holds {', '.join(found[:4])}{' ...' if len(found) > 4 else ''})" if found else ""
            raise ConfigError(f"config file '{path}' is a directory; a YAML file is expected{inside}")
        if not os.path.isfile(path):
            shipped = shipped_config_dir()
            hint = f" here, nor among the shipped configs in {shipped}" if shipped and not os.path.isabs(path) else ""
            raise ConfigError(f"config file '{path}' does not exist{hint}")
        with open(path, encoding="utf-8") as f:
            try:
                data = read_yaml(f)
            except yaml.YAMLError as err:
                raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if data is None:
            raise ConfigError(f"config file '{path}' is empty: pass a config that sets at least the keys it changes "
                              f"from the defaults, under its sections ({sections} ...)")
        if not isinstance(data, dict):
            kind = {list: "a list", str: "a text", int: "a number", float: "a number", bool: "a boolean"}.get(
                type(data), f"a {type(data).__name__}")
            raise ConfigError(f"config file '{path}' holds {kind}, not a mapping of sections ({sections} ...)")
        return data

    def load(self, path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
             bases: list[tuple[str, dict[str, Any]]] = ()) -> dict[str, Any]:
        """Defaults, then each ``(source, partial tree)`` of ``bases``, then the YAML file at ``path``,
        then each ``dotted.key=value`` override, checked."""
        cfg = copy.deepcopy(self.defaults)
        for source, tree in bases:
            self.merge(cfg, tree, source)
        if path is not None:
            self.merge(cfg, self.read_file(path), path)
        for text in overrides:
            key, value = self.parse_override(text)
            self.merge(cfg, _nest(key, value), f"override '{text}'")
        if self.consistency is not None:
            self.consistency(cfg, path or "config")
        return cfg


def _check_consistency(cfg: dict[str, Any], source: str) -> None:
    for key in ("augment.crop_scale", "augment.local_scale"):
        section, leaf = key.split(".")
        low, high = cfg[section][leaf]
        if low > high:
            raise ConfigError(f"{source}: '{key}' must be [low, high] with low <= high, got {[low, high]}")
    check_data_section(cfg["data"], source)
    if cfg["augment"]["backdrop"] > 0 and cfg["augment"]["pipeline"] != "small_gray":
        raise ConfigError(f"{source}: 'augment.backdrop' paints grayscale strokes (the 'small_gray' pipeline); "
                          f"augment.pipeline is '{cfg['augment']['pipeline']}'")
    for key in ("translate", "shear"):
        if cfg["augment"][key] > 0 and cfg["augment"]["pipeline"] != "small_gray":
            raise ConfigError(f"{source}: 'augment.{key}' belongs to the 'small_gray' pipeline's affine map; "
                              f"augment.pipeline is '{cfg['augment']['pipeline']}'")
    if cfg["augment"]["stroke_width"] > 0 and cfg["augment"]["pipeline"] != "small_gray":
        raise ConfigError(f"{source}: 'augment.stroke_width' changes grayscale strokes (the 'small_gray' pipeline); "
                          f"augment.pipeline is '{cfg['augment']['pipeline']}'")
    if cfg["augment"]["on_device"] and cfg["augment"]["pipeline"] != "barlow":
        raise ConfigError(f"{source}: 'augment.on_device' implements the 'barlow' pipeline; augment.pipeline is "
                          f"'{cfg['augment']['pipeline']}'")
    method_class(cfg).check_config(cfg, source)
    monitor = cfg["monitor"]
    if monitor["knn_every"] and monitor["train_split"] == monitor["val_split"]:
        raise ConfigError(f"{source}: 'monitor.train_split' and 'monitor.val_split' are both "
                          f"'{monitor['val_split']}': the kNN monitor must score images outside its memory")


def check_data_section(data: dict[str, Any], source: str) -> None:
    if data["dataset"] in ("folder", "filelist", "lmdb") and not data["path"]:
        raise ConfigError(f"{source}: 'data.path' must name the dataset location when data.dataset is "
                          f"'{data['dataset']}'")
    if data["dataset"] == "filelist" and not data["list_file"]:
        raise ConfigError(f"{source}: 'data.list_file' must name the list of images when data.dataset is 'filelist'")


def _nest(path: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = value
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return tree


PRETRAIN = Schema(DEFAULTS, CHOICES, RANGES, LIST_SHAPES, _check_consistency)


def parse_override(text: str) -> tuple[str, Any]:
    return PRETRAIN.parse_override(text)


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The pretraining config: defaults, then the YAML file at ``path``, then each override, checked."""
    return PRETRAIN.load(path, overrides)


def resume_changes(stored: dict[str, Any], cfg: dict[str, Any]) -> tuple[dict[str, list], dict[str, list]]:
    """The keys whose value differs between a checkpoint's config and ``cfg``, as ``{key: [stored, now]}``:
    those ``RESUMABLE`` allows, and the others. Keys only one of the two configs knows are not compared."""
    old, new = _flatten(stored), _flatten(cfg)
    allowed, refused = {}, {}
    for key in (k for k in new if k in old and old[k] != new[k]):
        rule = RESUMABLE.get(key)
        fits = rule == "any" or (rule == "grow" and new[key] > old[key])
        (allowed if fits else refused)[key] = [old[key], new[key]]
    return allowed, refused


def save_config(cfg: dict[str, Any], path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write(path, lambda f: yaml.safe_dump(cfg, f, sort_keys=False), binary=False)
