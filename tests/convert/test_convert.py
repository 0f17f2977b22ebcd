"""twist-convert: renaming tables, validated outputs for every architecture and target, safety."""
import argparse
import os
import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision

from twist.cli.convert import main as convert_main
from twist.convert import convert
from twist.convert.detectron2 import rename_resnet_key
from twist.convert.mmseg import rename_vit_key as mmseg_vit_key
from twist.convert.torchvision import rename_vit_key as torchvision_vit_key
from twist.convert.torchvision import torchvision_vit
from twist.engine.checkpoint import atomic_torch_save
from twist.models.backbones import build_backbone
from twist.models.pretrained import load_backbone_weights, load_into

# ---- renaming, against hand-written tables ----------------------------------------------------------

DETECTRON2_NAMES = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.weight": "stem.conv1.norm.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "bn1.num_batches_tracked": "stem.conv1.norm.num_batches_tracked",
    "layer1.0.conv1.weight": "res2.0.conv1.weight",
    "layer1.0.bn1.weight": "res2.0.conv1.norm.weight",
    "layer2.3.conv2.weight": "res3.3.conv2.weight",
    "layer2.1.bn2.running_mean": "res3.1.conv2.norm.running_mean",
    "layer3.5.bn3.bias": "res4.5.conv3.norm.bias",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer4.0.downsample.0.weight": "res5.0.shortcut.weight",
    "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean",
    "layer4.0.downsample.1.num_batches_tracked": "res5.0.shortcut.norm.num_batches_tracked",
}
MMSEG_VIT_NAMES = {
    "cls_token": "cls_token", "pos_embed": "pos_embed",
    "patch_embed.proj.weight": "patch_embed.projection.weight",
    "blocks.0.norm1.weight": "layers.0.ln1.weight", "blocks.11.norm2.bias": "layers.11.ln2.bias",
    "blocks.3.attn.qkv.weight": "layers.3.attn.attn.in_proj_weight",
    "blocks.3.attn.qkv.bias": "layers.3.attn.attn.in_proj_bias",
    "blocks.3.attn.proj.weight": "layers.3.attn.attn.out_proj.weight",
    "blocks.7.mlp.fc1.bias": "layers.7.ffn.layers.0.0.bias", "blocks.7.mlp.fc2.weight": "layers.7.ffn.layers.1.weight",
    "norm.weight": "ln1.weight", "norm.bias": "ln1.bias",
}
TORCHVISION_VIT_NAMES = {
    "cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
    "patch_embed.proj.bias": "conv_proj.bias",
    "blocks.0.norm1.weight": "encoder.layers.encoder_layer_0.ln_1.weight",
    "blocks.10.norm2.bias": "encoder.layers.encoder_layer_10.ln_2.bias",
    "blocks.2.attn.qkv.weight": "encoder.layers.encoder_layer_2.self_attention.in_proj_weight",
    "blocks.2.attn.proj.bias": "encoder.layers.encoder_layer_2.self_attention.out_proj.bias",
    "blocks.5.mlp.fc1.weight": "encoder.layers.encoder_layer_5.mlp.0.weight",
    "blocks.5.mlp.fc2.bias": "encoder.layers.encoder_layer_5.mlp.3.bias",
    "norm.weight": "encoder.ln.weight",
}


@pytest.mark.parametrize("table, rename", [(DETECTRON2_NAMES, rename_resnet_key), (MMSEG_VIT_NAMES, mmseg_vit_key),
                                           (TORCHVISION_VIT_NAMES, torchvision_vit_key)])
def test_renaming_rules_match_the_hand_written_table(table, rename):
    for source, target in table.items():
        assert rename(source) == target, source


# ---- outputs ------------------------------------------------------------------------------------------

def _ours(tmp_path, name, small_input=False, image_size=224, seed=0):
    """A freshly initialised backbone saved as this project's backbone.pth."""
    torch.manual_seed(seed)
    net = build_backbone(name, small_input, image_size=image_size).module
    path = str(tmp_path / f"{name}_backbone.pth")
    atomic_torch_save(net.state_dict(), path)
    return path, net


def _convert(target, src, out, *flags):
    return convert_main(["--to", target, str(src), str(out), *flags])


def test_resnet50_to_detectron2_has_exactly_318_tensors_as_numpy_under_detectron2_names(tmp_path, capsys):
    path, net = _ours(tmp_path, "resnet50")
    out = tmp_path / "r50.pkl"
    assert _convert("detectron2", path, out) == 0
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"} and data["matching_heuristics"] is True
    model = data["model"]
    assert len(model) == 318 and all(isinstance(v, np.ndarray) for v in model.values())
    assert not any("fc" in k or "layer" in k or "bn" in k or "downsample" in k for k in model)
    for source, target in DETECTRON2_NAMES.items():
        np.testing.assert_array_equal(model[target], net.state_dict()[source].numpy())
    assert model["res5.2.conv3.norm.num_batches_tracked"].dtype == np.int64
    printed = capsys.readouterr().out
    assert "MODEL.RESNETS.STRIDE_IN_1X1 False" in printed and "INPUT.FORMAT RGB" in printed


def test_resnet50w2_to_detectron2_and_mmseg_prints_the_widths(tmp_path, capsys):
    path, _ = _ours(tmp_path, "resnet50w2")
    assert _convert("detectron2", path, tmp_path / "w2.pkl") == 0
    printed = capsys.readouterr().out
    for key in ("STEM_OUT_CHANNELS 128", "RES2_OUT_CHANNELS 512", "WIDTH_PER_GROUP 128"):
        assert key in printed
    with open(tmp_path / "w2.pkl", "rb") as f:
        model = pickle.load(f)["model"]
    assert model["stem.conv1.weight"].shape == (128, 3, 7, 7)
    assert model["res5.0.conv3.weight"].shape == (4096, 1024, 1, 1)
    del model
    os.remove(tmp_path / "w2.pkl")  # a ResNet-50w2 is 375 MB a copy: the suite holds at most two at once
    assert _convert("mmseg", path, tmp_path / "w2_mmseg.pth") == 0
    assert "stem_channels=128, base_channels=128" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet50w2"])
def test_resnets_load_strictly_into_torchvision_and_timm(tmp_path, name):
    path, net = _ours(tmp_path, name)
    for target in ("torchvision", "timm"):
        out = tmp_path / f"{target}.pth"
        assert _convert(target, path, out) == 0
        sd = torch.load(out, weights_only=True)
        if name == "resnet50w2":  # neither library builds SwAV's widening: the names load into twist's module
            model = build_backbone(name).module
        elif target == "torchvision":
            model = getattr(torchvision.models, name)()
            model.fc = torch.nn.Identity()
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0)
        model.load_state_dict(sd, strict=True)
        for key, value in net.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        os.remove(out)


@pytest.mark.parametrize("name", ["deit_small", "vit_base"])
def test_vits_convert_to_all_four_targets_and_load_strictly(tmp_path, name):
    path, net = _ours(tmp_path, name)
    for target, suffix in (("detectron2", "pkl"), ("mmseg", "pth"), ("torchvision", "pth"), ("timm", "pth")):
        out = tmp_path / f"{target}.{suffix}"
        assert _convert(target, path, out) == 0, target
        if target == "timm":
            model = timm.create_model({"deit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}[name],
                                      pretrained=False, num_classes=0)
            model.load_state_dict(torch.load(out, weights_only=True), strict=True)
        elif target == "torchvision":
            model = torchvision_vit(name, 224, 16)
            model.heads = torch.nn.Identity()
            model.load_state_dict(torch.load(out, weights_only=True), strict=True)
        elif target == "detectron2":
            with open(out, "rb") as f:
                assert len(pickle.load(f)["model"]) == len(net.state_dict())
        os.remove(out)  # a ViT-B is 344 MB a copy: the suite holds at most two at once


def test_torchvision_vit_computes_the_same_function_as_timm(tmp_path):
    path, net = _ours(tmp_path, "deit_small", small_input=True, image_size=32)
    assert _convert("torchvision", path, tmp_path / "tv.pth") == 0
    tv = torchvision_vit("deit_small", 32, 4)
    tv.heads = torch.nn.Identity()
    tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(images), net.eval()(images), rtol=1e-4, atol=1e-4)


def test_the_demo_style_checkpoint_converts_to_all_four_targets(tmp_path):
    """A full checkpoint.pth of a short run, as `make demo` writes it (ResNet-18, 7x7 stem)."""
    from tests.conftest import TINY
    from twist.config import load_config
    from twist.engine.trainer import train

    train(load_config(None, TINY + ["train.epochs=1"]), str(tmp_path / "run"))
    for target, suffix in (("detectron2", "pkl"), ("mmseg", "pth"), ("torchvision", "pth"), ("timm", "pth")):
        for source in ("checkpoint.pth", "backbone.pth"):
            assert _convert(target, tmp_path / "run" / source, tmp_path / f"{target}_{source}.{suffix}") == 0


@pytest.mark.parametrize("name, depth, extra", [("resnet50", 50, {}), ("resnet18", 18, {}),
                                                 ("resnet50w2", 50, {"stem_channels": 128, "base_channels": 128})])
def test_mmseg_output_loads_strictly_into_mmseg_resnet(tmp_path, name, depth, extra):
    from twist.mmseg_compat import ensure_mmseg_importable

    pytest.importorskip("mmseg", reason="the seg extra (mmsegmentation) is not installed")
    ensure_mmseg_importable()
    from mmseg.models.backbones import ResNet

    path, net = _ours(tmp_path, name)
    assert _convert("mmseg", path, tmp_path / "mmseg.pth") == 0
    checkpoint = torch.load(tmp_path / "mmseg.pth", weights_only=True)
    assert checkpoint["meta"]["architecture"] == name
    backbone = ResNet(depth=depth, style="pytorch", **extra)
    backbone.load_state_dict(checkpoint["state_dict"], strict=True)
    assert torch.equal(backbone.state_dict()["layer3.1.conv2.weight"], net.state_dict()["layer3.1.conv2.weight"])


def test_mmseg_vit_output_loads_strictly_into_mmseg_vision_transformer(tmp_path):
    from twist.mmseg_compat import ensure_mmseg_importable

    pytest.importorskip("mmseg", reason="the seg extra (mmsegmentation) is not installed")
    ensure_mmseg_importable()
    from mmseg.models.backbones import VisionTransformer

    path, _ = _ours(tmp_path, "deit_small")
    assert _convert("mmseg", path, tmp_path / "vit.pth") == 0
    backbone = VisionTransformer(img_size=224, patch_size=16, embed_dims=384, num_layers=12, num_heads=6, mlp_ratio=4,
                                 patch_bias=True, final_norm=True, with_cls_token=True)
    backbone.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True)["state_dict"], strict=True)


def test_detectron2_checkpointer_loads_every_backbone_tensor(tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is installed from its own guide, not the package index")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    path, net = _ours(tmp_path, "resnet50")
    assert _convert("detectron2", path, tmp_path / "r50.pkl") == 0
    cfg = get_cfg()
    cfg.merge_from_file("detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(tmp_path / "r50.pkl")))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up")]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    loaded = model.backbone.bottom_up.res4[5].conv3.weight.detach()
    assert torch.equal(loaded, net.state_dict()["layer3.5.conv3.weight"])


# ---- inputs -------------------------------------------------------------------------------------------

def test_round_trip_torchvision_to_ours_to_torchvision(tmp_path):
    torch.manual_seed(3)
    original = torchvision.models.resnet50()
    ours = build_backbone("resnet50").module
    load_into(ours, {k: v for k, v in original.state_dict().items() if not k.startswith("fc.")}, "torchvision")
    atomic_torch_save({"backbone": ours.state_dict()}, str(tmp_path / "ours.pth"))
    assert _convert("torchvision", tmp_path / "ours.pth", tmp_path / "back.pth") == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    expected = {k: v for k, v in original.state_dict().items() if not k.startswith("fc.")}
    assert back.keys() == expected.keys()
    for key in expected:
        assert torch.equal(back[key], expected[key]), key


def test_other_codebases_prefixes_and_the_teacher_are_found(tmp_path, capsys):
    _, net = _ours(tmp_path, "resnet18")
    _, other = _ours(tmp_path, "resnet18", seed=1)
    moco = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    moco |= {f"module.encoder_k.{k}": v for k, v in other.state_dict().items()}
    moco |= {"module.encoder_q.fc.0.weight": torch.zeros(4, 512), "module.queue": torch.zeros(8, 4)}
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    assert _convert("torchvision", tmp_path / "moco.pth", tmp_path / "a.pth") == 0
    assert torch.equal(torch.load(tmp_path / "a.pth", weights_only=True)["conv1.weight"],
                       net.state_dict()["conv1.weight"])

    torch.save({"backbone": net.state_dict(), "teacher_backbone": other.state_dict()}, tmp_path / "run.pth")
    assert _convert("timm", tmp_path / "run.pth", tmp_path / "t.pth", "--teacher") == 0
    assert torch.equal(torch.load(tmp_path / "t.pth", weights_only=True)["conv1.weight"],
                       other.state_dict()["conv1.weight"])
    assert convert_main(["--inspect", str(tmp_path / "moco.pth")]) == 0
    shown = capsys.readouterr().out
    assert "module.encoder_q. stripped" in shown and "resnet18" in shown and "fc.0.weight" in shown


def test_authors_checkpoints_need_trust_checkpoint(tmp_path, capsys):
    _, net = _ours(tmp_path, "resnet18")
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "backbone": net.state_dict(),
                "args": argparse.Namespace(lr=0.5), "epoch": 800}, tmp_path / "authors.pth")
    assert _convert("detectron2", tmp_path / "authors.pth", tmp_path / "a.pkl") == 2
    err = capsys.readouterr().err
    assert "argparse.Namespace" in err and "--trust-checkpoint" in err and not (tmp_path / "a.pkl").exists()
    assert _convert("detectron2", tmp_path / "authors.pth", tmp_path / "a.pkl", "--trust-checkpoint") == 0
    assert "full unpickling" in capsys.readouterr().err and (tmp_path / "a.pkl").exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage", b"PK\x03\x04 cut short"])
def test_garbage_or_truncated_inputs_are_clear_errors(tmp_path, capsys, content):
    (tmp_path / "bad.pth").write_bytes(content)
    assert _convert("timm", tmp_path / "bad.pth", tmp_path / "out.pth") == 2
    err = capsys.readouterr().err
    assert "bad.pth' is truncated or not a torch checkpoint" in err and "Traceback" not in err


def test_a_misshapen_checkpoint_is_refused_with_the_keys_named(tmp_path, capsys):
    _, net = _ours(tmp_path, "resnet50")
    state = dict(net.state_dict())
    state["conv1.weight"] = torch.zeros(128, 3, 7, 7)  # a R50w2 stem on a R50 body
    state["bn1.weight"] = torch.zeros(128)
    torch.save(state, tmp_path / "odd.pth")
    assert _convert("detectron2", tmp_path / "odd.pth", tmp_path / "odd.pkl") == 2
    err = capsys.readouterr().err
    assert "misshapen" in err and "res2.0.conv1.weight: (64, 64, 1, 1), expected (128, 128, 1, 1)" in err
    assert not (tmp_path / "odd.pkl").exists()


def test_outputs_are_atomic_never_over_the_input_and_named_for_the_target(tmp_path, capsys):
    path, _ = _ours(tmp_path, "resnet18")
    assert _convert("timm", path, path) == 2
    assert "is the input file" in capsys.readouterr().err
    assert _convert("detectron2", path, tmp_path / "r18.pth") == 2
    assert "must end in .pkl" in capsys.readouterr().err
    assert _convert("timm", path, tmp_path / "missing_dir" / "x.pth") == 2
    assert _convert("timm", path, tmp_path / "ok.pth") == 0
    assert sorted(os.listdir(tmp_path)) == ["ok.pth", "resnet18_backbone.pth"]  # no temporary file left


def test_small_input_stems_are_refused_where_the_target_has_none(tmp_path, capsys):
    path, _ = _ours(tmp_path, "resnet18", small_input=True)
    assert _convert("detectron2", path, tmp_path / "s.pkl") == 2
    assert "small-input 3x3 stem has no detectron2 counterpart" in capsys.readouterr().err
    assert _convert("torchvision", path, tmp_path / "s.pth") == 0
    assert "model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1" in capsys.readouterr().out


def test_the_library_call_matches_the_command(tmp_path):
    path, _ = _ours(tmp_path, "resnet18")
    conversion = convert(load_backbone_weights(path), "mmseg")
    assert conversion.target == "mmseg" and len(conversion.state_dict) == 120
