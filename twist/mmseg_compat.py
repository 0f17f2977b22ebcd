"""Let MMSegmentation's model code import on ``mmcv-lite`` (mmcv without compiled ops).

mmseg 1.2.2 imports ``mmcv.ops`` at module level in a few places (``point_sample``,
``sigmoid_focal_loss``) and other ops inside ``try/except ModuleNotFoundError``. With mmcv-lite,
``import mmcv.ops`` fails (``No module named 'mmcv._ext'``), so ``import mmseg.models`` fails with
it. :func:`ensure_mmseg_importable` registers a stand-in ``mmcv.ops`` that offers the pure-PyTorch
``point_sample`` (read from mmcv's own ``ops/point_sample.py``, which needs no compiled code), a
``sigmoid_focal_loss`` that says what to install, and raises ``ModuleNotFoundError`` for every other
op, which mmseg's optional-import guards catch. The models this project uses (ResNet, FPN, FCN and
FPN heads) need no compiled op. With full mmcv installed it does nothing.

GPU users who want mmseg's compiled ops install full mmcv instead: see the README.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types


def _has_compiled_ops() -> bool:
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def _sigmoid_focal_loss(*args, **kwargs):
    raise RuntimeError("sigmoid_focal_loss needs mmcv's compiled ops, which mmcv-lite lacks; install full mmcv "
                       "(see the README's segmentation section) or use a cross-entropy loss")


class _OpsStandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops (mmcv._ext), which mmcv-lite lacks; "
                                  f"install full mmcv for it")


def ensure_mmseg_importable() -> None:
    """Install the stand-in ``mmcv.ops`` if mmcv has no compiled ops; idempotent, and a no-op otherwise."""
    if "mmcv.ops" in sys.modules or _has_compiled_ops():
        return
    import mmcv

    path = os.path.join(os.path.dirname(mmcv.__file__), "ops", "point_sample.py")
    spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", path)
    point_sample_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(point_sample_module)
    ops = _OpsStandIn("mmcv.ops", "stand-in for mmcv.ops on mmcv-lite (see twist/mmseg_compat.py)")
    ops.point_sample = point_sample_module.point_sample
    ops.sigmoid_focal_loss = _sigmoid_focal_loss
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
