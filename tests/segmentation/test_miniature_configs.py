"""The miniature configs of the transfer benchmark, built by mmengine itself: each changes from the
config it inherits only what its comment says."""
import os

import torch

from tests.segmentation.conftest import CONFIG_DIR
from twist.mmseg_compat import ensure_mmseg_importable

ensure_mmseg_importable()
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

register_all_modules()
MINIATURE = os.path.join(CONFIG_DIR, "miniature")


def _model_and_optimizer(name: str):
    cfg = Config.fromfile(os.path.join(MINIATURE, name))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    return cfg, model, build_optim_wrapper(model, cfg.optim_wrapper).optimizer


def _rates(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, set[float]]:
    """The learning rate of every parameter, gathered by the module it belongs to."""
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    rates: dict[str, set[float]] = {}
    for name, param in model.named_parameters():
        rates.setdefault(name.split(".")[0], set()).add(rate_of[id(param)])
    return rates


def test_the_tenth_rate_config_slows_the_backbone_alone():
    base_cfg, base_model, base_opt = _model_and_optimizer("fpn_r18_digit_scenes-64x64.py")
    cfg, model, optimizer = _model_and_optimizer("fpn_r18_digit_scenes-64x64_backbone-lr0.1.py")
    assert _rates(base_model, base_opt) == {"backbone": {0.01}, "neck": {0.01}, "decode_head": {0.01}}
    assert _rates(model, optimizer) == {"backbone": {0.001}, "neck": {0.01}, "decode_head": {0.01}}
    # The optimiser, its decay and the schedule are the inherited ones.
    assert cfg.optim_wrapper.optimizer == base_cfg.optim_wrapper.optimizer
    assert cfg.param_scheduler == base_cfg.param_scheduler and cfg.train_cfg == base_cfg.train_cfg
    assert cfg.model == base_cfg.model
