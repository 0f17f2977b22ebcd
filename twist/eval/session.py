"""What every evaluation run shares: its config, device and ranks, the weights it evaluates, its data
and its output folder."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from twist.atomic import atomic_write, writing
from twist.config import ConfigError, save_config
from twist.data import DatasetError, EvalDataset, SourceConfig, build_source
from twist.data.transforms import build_classification_transforms
from twist.distributed import DistEnv, init_distributed
from twist.engine.checkpoint import CheckpointError, Entry, stored_config
from twist.engine.runtime import autocast_dtype, resolve_device, seed_everything
from twist.eval.config import EVAL, inherited_from_pretraining, pretraining_config_of
from twist.eval.features import FeatureExtractor
from twist.models.backbones import Backbone, build_backbone
from twist.models.pretrained import BackboneWeights, load_backbone_weights, load_into, refuse_nonfinite

RESULTS = "results.json"


@dataclass
class EvalSession:
    protocol: str
    cfg: dict[str, Any]
    output_dir: str
    device: torch.device
    env: DistEnv
    autocast_dtype: torch.dtype | None
    backbone: Backbone
    backbone_name: str
    weights: BackboneWeights | None      # None: random initialisation
    teacher: bool                        # the weights are the EMA teacher's
    pretrain_cfg: dict[str, Any] | None  # the checkpoint's pretraining config, when it has one
    config_sources: list[str]

    # ---- data --------------------------------------------------------------------------------------

    def source(self, split: str, needs_labels: bool = True):
        try:
            src = build_source(SourceConfig.from_config(self.cfg), split)
        except DatasetError as err:
            raise DatasetError(f"{self.protocol}: {err}") from None
        if needs_labels and not getattr(src, "labelled", True):
            raise DatasetError(f"{self.protocol} needs labels, but the '{split}' split of data.dataset="
                               f"{self.cfg['data']['dataset']} has none (a file list of bare paths); give a "
                               f"list of '<path> <integer label>' lines")
        return src

    def train_and_val_sources(self):
        data = self.cfg["data"]
        if data["train_split"] == data["val_split"]:
            raise ConfigError(f"data.train_split and data.val_split are both '{data['val_split']}': "
                              f"the {self.protocol} scores must come from images the classifier did not train on")
        return self.source(data["train_split"]), self.source(data["val_split"])

    def transforms(self):
        """(training views, deterministic evaluation transform) of the supervised protocols."""
        aug = self.cfg["augment"]
        return build_classification_transforms(aug["pipeline"], self.cfg["data"]["image_size"],
                                               tuple(aug["crop_scale"]), aug["hflip"], aug["interpolation"],
                                               aug["backdrop"])

    def eval_dataset(self, source) -> EvalDataset:
        return EvalDataset(source, self.transforms()[1])

    def feature_extractor(self, probe_feature: bool = True) -> FeatureExtractor:
        """The backbone's feature; ``probe_feature``: for ViTs, the multi-block feature of ``features.*``
        (frozen probes), else the plain CLS token (fine-tuning)."""
        feats = self.cfg["features"]
        vit_probe = probe_feature and self.backbone.family == "vit"
        return FeatureExtractor(self.backbone.module, self.backbone.family, self.backbone.feature_dim,
                                feats["vit_last_blocks"] if vit_probe else 1,
                                feats["vit_avgpool"] and vit_probe).to(self.device)

    # ---- outputs -----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The provenance block of every results.json."""
        weights = self.weights
        return {
            "protocol": self.protocol,
            "checkpoint": weights.path if weights else None,
            "weights": "random" if weights is None else ("teacher" if self.teacher else "student"),
            "weights_entry": weights.where if weights else None,
            "backbone": self.backbone_name,
            "world_size": self.env.world_size,
            "config_sources": self.config_sources,
        }

    def write_json(self, name: str, data: dict[str, Any]) -> str:
        path = os.path.join(self.output_dir, name)
        if self.env.is_main:
            atomic_write(path, lambda f: json.dump(data, f, indent=2), binary=False)
        return path


def open_session(protocol: str, output_dir: str, checkpoint: str | None = None, teacher: bool = False,
                 trust_checkpoint: bool = False, config_path: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> EvalSession:
    """Resolve the config, join the ranks, and build the backbone with the checkpoint's weights
    (or, with no checkpoint, randomly initialised from ``model.*``)."""
    weights, pretrain_cfg, bases, sources = None, None, [], []
    if checkpoint is not None:
        weights = load_backbone_weights(checkpoint, teacher=teacher, trust=trust_checkpoint)
        pretrain_cfg, where = pretraining_config_of(checkpoint, weights.checkpoint)
        if pretrain_cfg is not None:
            bases.append((where, inherited_from_pretraining(pretrain_cfg)))
            sources.append(where)
    elif teacher:
        raise ConfigError("--teacher needs a --checkpoint to take the teacher's weights from")
    if config_path:
        sources.append(config_path)
    cfg = EVAL.load(config_path, overrides, bases)
    if overrides:
        sources.append("command-line overrides")

    device = resolve_device(cfg["device"])
    env = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    amp_dtype = autocast_dtype(cfg["precision"], device, key="precision")
    seed_everything(cfg["seed"])

    if weights is not None:
        arch = weights.architecture
        image_size = arch.image_size or cfg["data"]["image_size"]
        backbone = build_backbone(arch.name, arch.small_input, image_size=image_size)
        load_into(backbone.module, weights.state_dict, checkpoint)
        name = arch.name + (" (small input)" if arch.small_input else "")
    else:
        model = cfg["model"]
        backbone = build_backbone(model["backbone"], model["small_input"], image_size=cfg["data"]["image_size"])
        name = model["backbone"] + (" (small input)" if model["small_input"] else "")
    backbone.module.to(device)

    if env.is_main:
        with writing(output_dir):
            os.makedirs(output_dir, exist_ok=True)
        save_config(cfg, os.path.join(output_dir, "config.yaml"))
    return EvalSession(protocol, cfg, output_dir, device, env, amp_dtype, backbone, name, weights, teacher,
                       pretrain_cfg, sources)


def require_full_checkpoint(session: EvalSession) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The whole model's state dict (student or teacher) and its pretraining config, for the protocols
    that need the head, or an error that says what file to pass instead."""
    weights = session.weights
    if weights is None:
        raise CheckpointError(f"{session.protocol} reads the TWIST head: pass --checkpoint with a full "
                              f"checkpoint.pth of this project")
    entry = Entry.TEACHER if session.teacher else Entry.MODEL
    obj = weights.checkpoint
    config = stored_config(obj)
    if not (config is not None and isinstance(obj.get(entry), dict)):
        raise CheckpointError(f"{session.protocol} reads the TWIST head, but '{weights.path}' has no '{entry}' "
                              f"entry with a stored config (its backbone came from '{weights.where}'); pass the "
                              f"run's full checkpoint.pth instead of backbone-only weights")
    refuse_nonfinite(obj[entry], weights.path, entry)
    return obj[entry], config
