"""Backbone weights from any checkpoint layout: this project's, the authors', other SSL codebases'.

Reading a checkpoint goes in three steps, each reported so that a user can see what was used:

1. **Load** the file weights-only. A file that needs full unpickling (the authors' checkpoints hold an
   ``argparse.Namespace``) is refused unless the caller passes ``trust=True``
   (``--trust-checkpoint`` on the command line): unpickling runs code from the file.
2. **Locate** the backbone's state dict inside it. The search order:
   - with ``teacher``: ``teacher_backbone``, then the ``backbone.*`` keys of ``teacher``;
   - otherwise: ``backbone``, then ``state_dict``, then the ``backbone.*`` keys of ``model`` (or its
     ``features.backbone.*`` keys: a network fine-tuned by ``twist-eval semisup``);
   - and last, the object itself as a plain state dict.
3. **Strip** the prefixes of other codebases, repeatedly, longest first: ``module.encoder_q.``
   (MoCo), ``module.backbone.``, ``module.encoder.``, ``module.``, ``backbone.``, ``encoder.``. When a
   prefix is found, only the keys under it are kept (MoCo's ``encoder_k`` is dropped, for example).
   Then only the backbone's own tensors are kept: the classifier (``fc``, ``head``) and any
   projection head are dropped and listed.

The architecture is then recognised from the names and shapes alone (:func:`detect_architecture`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from twist.engine.checkpoint import CheckpointError, Entry, describe_tensors, nonfinite_tensors, read_torch_file
from twist.models.architectures import BACKBONES

STRIPPED_PREFIXES = ("module.encoder_q.", "module.backbone.", "module.encoder.", "module.", "backbone.", "encoder.")
RESNET_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")
VIT_KEY = re.compile(r"^(cls_token|pos_embed|reg_token|patch_embed\.|blocks\.|norm\.|norm_pre\.)")
VIT_WIDTHS = {spec.width: spec.name for spec in BACKBONES.values() if spec.family == "vit"}
RESNET50_WIDTHS = {spec.stem_width: spec.name for spec in BACKBONES.values() if spec.bottleneck}
BASIC_RESNETS = {spec.blocks: spec.name for spec in BACKBONES.values()
                 if spec.family == "resnet" and not spec.bottleneck}


@dataclass(frozen=True)
class Architecture:
    """What a backbone state dict is, recognised from its key names and shapes."""

    name: str           # a model.backbone choice: resnet18, resnet50w2, deit_small, ...
    family: str         # "resnet" or "vit"
    small_input: bool   # ResNet: 3x3 stride-1 stem; ViT: 4-px patches
    image_size: int     # ViT: the size its position embedding was trained at; ResNet: 0 (any)


@dataclass
class BackboneWeights:
    state_dict: dict[str, torch.Tensor]
    architecture: Architecture
    path: str
    where: str                        # which entry of the file held them, e.g. "backbone" or "model (backbone.*)"
    stripped_prefixes: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    trusted_load: bool = False        # loaded with full unpickling (--trust-checkpoint)
    checkpoint: Any = None            # the whole loaded object, for callers that need more (config, head)


TRUST_HINT = ("If you trust where the file comes from (the authors' checkpoints hold an argparse.Namespace), "
              "pass --trust-checkpoint")


def read_checkpoint(path: str, trust: bool = False) -> tuple[Any, bool]:
    """Load ``path`` weights-only (full unpickling only with ``trust``, ``--trust-checkpoint`` in every command
    that reads weights this way); see ``read_torch_file``."""
    return read_torch_file(path, trust, TRUST_HINT)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _under(state: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def locate_backbone(obj: Any, path: str, teacher: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone's state dict inside a loaded checkpoint, and where it was found (see the module doc)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a dict of tensors")
    if teacher:
        if _is_state_dict(obj.get(Entry.TEACHER_BACKBONE)):
            return dict(obj[Entry.TEACHER_BACKBONE]), Entry.TEACHER_BACKBONE
        if _is_state_dict(obj.get(Entry.TEACHER)):
            inner = _under(obj[Entry.TEACHER], "backbone.") or _under(obj[Entry.TEACHER], "module.backbone.")
            if inner:
                return inner, "teacher (backbone.*)"
        raise CheckpointError(f"checkpoint '{path}' has no teacher weights (no 'teacher_backbone' or 'teacher' "
                              f"entry; its top-level keys are {sorted(map(str, obj))[:10]}); drop --teacher")
    for key in (Entry.BACKBONE, "state_dict"):  # state_dict: other codebases
        if _is_state_dict(obj.get(key)):
            return dict(obj[key]), key
    if _is_state_dict(obj.get(Entry.MODEL)):
        for prefix in ("backbone.", "module.backbone.", "features.backbone."):  # the last: twist-eval's fine-tuned
            inner = _under(obj[Entry.MODEL], prefix)
            if inner:
                return inner, f"model ({prefix}*)"
        return dict(obj[Entry.MODEL]), Entry.MODEL
    if _is_state_dict(obj):
        return dict(obj), "the file itself (a plain state dict)"
    raise CheckpointError(f"checkpoint '{path}' has no backbone weights: expected a plain state dict or one of "
                          f"the entries 'backbone', 'state_dict', 'model', 'teacher_backbone'; its top-level keys "
                          f"are {sorted(map(str, obj))[:10]}")


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the wrapper prefixes of other codebases (see the module doc); return the state and them."""
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = _under(state, prefix)
                stripped.append(prefix)
                changed = True
                break
    return state, stripped


def keep_backbone_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone's own tensors (ResNet or ViT names); everything else is returned as dropped."""
    pattern = VIT_KEY if "patch_embed.proj.weight" in state else RESNET_KEY
    kept = {k: v for k, v in state.items() if pattern.match(k)}
    return kept, sorted(k for k in state if k not in kept)


def _blocks(state: dict[str, torch.Tensor], stage: str) -> int:
    indices = {int(m.group(1)) for k in state for m in [re.match(rf"^{re.escape(stage)}\.(\d+)\.", k)] if m}
    return max(indices) + 1 if indices else 0


def detect_architecture(state: dict[str, torch.Tensor], path: str = "<weights>") -> Architecture:
    """Recognise a backbone from its tensors' names and shapes, or raise naming what was found."""
    if "patch_embed.proj.weight" in state:
        width, _, patch, _ = state["patch_embed.proj.weight"].shape
        if width not in VIT_WIDTHS:
            raise CheckpointError(f"'{path}': a ViT of width {width}; supported are "
                                  f"{', '.join(f'{n} ({w})' for w, n in VIT_WIDTHS.items())}")
        depth = _blocks(state, "blocks")
        expected = BACKBONES[VIT_WIDTHS[width]].depth
        if depth != expected:
            raise CheckpointError(f"'{path}': a ViT with {depth} blocks; {VIT_WIDTHS[width]} has {expected}")
        tokens = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else 0
        side = int(round(tokens ** 0.5))
        if side * side != tokens:
            raise CheckpointError(f"'{path}': pos_embed has {tokens} patch positions, not a square grid")
        return Architecture(VIT_WIDTHS[width], "vit", patch == 4, side * patch)
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        shown = ", ".join(sorted(state)[:6])
        raise CheckpointError(f"'{path}': not a recognised backbone: expected ResNet keys (conv1.weight, "
                              f"layer1.0.conv1.weight, ...) or ViT keys (patch_embed.proj.weight, blocks.0...); "
                              f"found {len(state)} keys such as {shown}")
    stem = state["conv1.weight"]
    small_input = stem.shape[-1] == 3
    bottleneck = "layer1.0.conv3.weight" in state
    layout = tuple(_blocks(state, f"layer{i}") for i in range(1, 5))
    if not bottleneck and layout in BASIC_RESNETS:
        name = BASIC_RESNETS[layout]
        if stem.shape[0] != 64:
            raise CheckpointError(f"'{path}': {name} with a {stem.shape[0]}-channel stem; expected 64")
    elif bottleneck and layout == BACKBONES["resnet50"].blocks:
        if stem.shape[0] not in RESNET50_WIDTHS:
            raise CheckpointError(f"'{path}': a ResNet-50 layout with a {stem.shape[0]}-channel stem (conv1.weight "
                                  f"{tuple(stem.shape)}); expected 64 (R50), 128 (R50w2) or 256 (R50w4)")
        name = RESNET50_WIDTHS[stem.shape[0]]
    else:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(f"'{path}': a ResNet with {kind} blocks {list(layout)} per stage; supported are "
                              f"ResNet-18/34 (basic) and ResNet-50 and its widened w2/w4 (bottleneck, [3, 4, 6, 3])")
    return Architecture(name, "resnet", small_input, 0)


def load_backbone_weights(path: str, teacher: bool = False, trust: bool = False) -> BackboneWeights:
    """Read ``path`` and return the backbone's tensors, recognised and stripped of everything else."""
    obj, trusted = read_checkpoint(path, trust)
    state, where = locate_backbone(obj, path, teacher)
    state, stripped = strip_prefixes(state)
    state, dropped = keep_backbone_keys(state)
    if not state:
        raise CheckpointError(f"checkpoint '{path}': the entry '{where}' holds no backbone tensors "
                              f"(dropped: {dropped[:8]})")
    refuse_nonfinite(state, path, where)
    return BackboneWeights(state, detect_architecture(state, path), path, where, stripped, dropped, trusted, obj)


def refuse_nonfinite(state: dict[str, Any], path: str, where: str) -> None:
    """Raise naming the tensors that hold NaN or inf: a diverged run's weights are never exported or scored."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"checkpoint '{path}' has NaN or inf in {describe_tensors(bad)} of '{where}', so "
                              f"its weights were not used: take a checkpoint saved before the run diverged")


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    misshapen = sorted(f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                       for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or misshapen:
        parts = [f"{name} ({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                 if keys]
        raise CheckpointError(f"weights from '{path}' do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
