"""Detectron2: a ``.pkl`` in the model-zoo layout that its checkpointer reads with name matching.

ResNets are renamed with the rules every SSL codebase uses (spec 1.3), applied in order to the
torchvision names: a key outside ``layerN`` gets ``stem.``; ``layer1..4`` become ``res2..5``;
``bn1/2/3`` become ``conv1/2/3.norm``; ``downsample.0`` becomes ``shortcut`` and ``downsample.1``
``shortcut.norm``. ViTs keep timm's names, which detectron2's ViTDet shares. The file is
``{"model": {name: numpy array}, "__author__": "twist", "matching_heuristics": True}``.

Such files are plain pickles, so :func:`read_detectron2_pkl` reads them (and the model zoo's) with an
unpickler that admits only numpy arrays, numbers, strings and containers: a plain ``pickle.load`` of a
user's ``.pkl`` runs whatever code the file names.
"""
from __future__ import annotations

import codecs
import functools
import pickle
import re
from typing import Any

from twist.convert.conversion import Conversion, ConversionError, compare
from twist.convert.layouts import expected_shapes
from twist.engine.checkpoint import CheckpointError
from twist.models.architectures import BACKBONES
from twist.models.pretrained import BackboneWeights

TORCHVISION_PIXELS = ("MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]", "MODEL.PIXEL_STD [58.395, 57.120, 57.375]",
                      "INPUT.FORMAT RGB", "MODEL.RESNETS.STRIDE_IN_1X1 False")
WIDE_KEYS = {2: ("MODEL.RESNETS.STEM_OUT_CHANNELS 128", "MODEL.RESNETS.RES2_OUT_CHANNELS 512",
                 "MODEL.RESNETS.WIDTH_PER_GROUP 128"),
             4: ("MODEL.RESNETS.STEM_OUT_CHANNELS 256", "MODEL.RESNETS.RES2_OUT_CHANNELS 1024",
                 "MODEL.RESNETS.WIDTH_PER_GROUP 256")}


def rename_resnet_key(key: str) -> str:
    if "layer" not in key:
        key = "stem." + key
    key = re.sub(r"layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn([1-3])", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _serialize(state):
    def write(f):
        model = {k: v.detach().cpu().numpy() for k, v in state.items()}
        pickle.dump({"model": model, "__author__": "twist", "matching_heuristics": True}, f)
    return write


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(text, 'latin1')``; no other codec is looked up."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode with the codec {encoding!r}")
    return codecs.encode(text, "latin1")


@functools.cache
def _admitted_globals() -> dict[tuple[str, str], Any]:
    """What pickles of numpy arrays and scalars name (under numpy 1's and 2's module paths), and containers."""
    import collections

    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    admitted: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                            ("_codecs", "encode"): _latin1_encode,
                                            ("collections", "OrderedDict"): collections.OrderedDict}
    admitted.update({(module, t.__name__): t for t in (set, frozenset, bytearray, complex)
                     for module in ("builtins", "__builtin__")})  # the latter: protocols 0-2
    for package in ("numpy.core", "numpy._core"):  # numpy 2 reads numpy 1's names and the reverse
        admitted[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        admitted[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        admitted[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer  # protocol 5
    return admitted


class _Refused(Exception):
    """A global outside :func:`_admitted_globals`: the text names it."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _admitted_globals()[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def read_detectron2_pkl(path: str) -> Any:
    """Unpickle a detectron2 ``.pkl`` admitting only numpy arrays, numbers, strings and containers.

    A file that names any other global (a class, a function such as ``os.system``) is refused before
    the global is looked up, with a :class:`CheckpointError` naming the file and the global.
    """
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except _Refused as refused:
        raise CheckpointError(f"'{path}' holds {refused} beyond arrays, numbers, strings and containers, so it was "
                              f"not loaded: unpickling it could run code from the file") from None
    except OSError as err:
        raise CheckpointError(f"'{path}' cannot be read: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged pickle raises is reported the same way
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"'{path}' is truncated or not a detectron2 .pkl: {detail}") from None


def convert(weights: BackboneWeights) -> Conversion:
    arch = weights.architecture
    if arch.family == "vit":
        state = dict(weights.state_dict)
        compare(expected_shapes(arch, "timm"), state, f"the timm/ViTDet names of {arch.name}")
        notes = ["ViTDet (projects/ViTDet, LazyConfig): train.init_checkpoint = '<this file>' (it is read with name "
                 "matching); the cls token is unused and the position embedding is interpolated",
                 f"model.backbone.net: embed_dim={state['cls_token'].shape[-1]}, depth=12, "
                 f"num_heads={ {384: 6, 768: 12}[state['cls_token'].shape[-1]] }"]
        return Conversion("detectron2", state, f"the timm/ViTDet names of {arch.name}", _serialize(state), (".pkl",),
                          notes)
    if arch.small_input:
        raise ConversionError(f"'{weights.path}': {arch.name} with the small-input 3x3 stem has no detectron2 "
                              f"counterpart (detectron2's stem is a 7x7 convolution)")
    state = {rename_resnet_key(k): v for k, v in weights.state_dict.items()}
    compare(expected_shapes(arch, "detectron2"), state, f"detectron2's ResNet-{BACKBONES[arch.name].depth} names")
    notes = [f"MODEL.RESNETS.DEPTH {BACKBONES[arch.name].depth}", *TORCHVISION_PIXELS]
    if not BACKBONES[arch.name].bottleneck:
        notes.append("MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    widen = BACKBONES[arch.name].widen
    if widen > 1:
        notes += WIDE_KEYS[widen]
    return Conversion("detectron2", state, f"detectron2's ResNet-{BACKBONES[arch.name].depth} names and shapes",
                      _serialize(state), (".pkl",), notes)
