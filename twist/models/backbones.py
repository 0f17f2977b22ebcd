"""Backbones that map an image batch to one feature vector per image.

Every backbone keeps the key names of the library it comes from (torchvision for ResNets, timm for
ViTs), so its state dict exports as-is to ``backbone.pth`` and the converters start from known names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from twist.models.architectures import BackboneSpec, backbone_spec


@dataclass
class Backbone:
    module: nn.Module
    feature_dim: int
    family: str  # "resnet" or "vit": decides head init and export naming


class WideResNet50(nn.Module):
    """SwAV-style ResNet-50 with every width, the stem's included, multiplied by ``widen``.

    This differs from torchvision's ``wide_resnet50_2``, which widens only the inner 3x3 convs.
    Module names follow torchvision's ResNet, so state dicts use the same keys.
    """

    def __init__(self, widen: int, small_input: bool = False, zero_init_residual: bool = False):
        super().__init__()
        stem_width = 64 * widen
        self.inplanes = stem_width
        if small_input:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64 * widen, 3, stride=1)
        self.layer2 = self._make_layer(128 * widen, 4, stride=2)
        self.layer3 = self._make_layer(256 * widen, 6, stride=2)
        self.layer4 = self._make_layer(512 * widen, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512 * widen * tv_resnet.Bottleneck.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, tv_resnet.Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * tv_resnet.Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        # base_width=64 makes the bottleneck's inner width equal to `planes`, i.e. widened too.
        layers = [tv_resnet.Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_channels
        layers += [tv_resnet.Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _torchvision_resnet(name: str, small_input: bool, zero_init_residual: bool = False) -> Backbone:
    net = getattr(tv_resnet, name)(zero_init_residual=zero_init_residual)
    if small_input:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # no fc.* keys: the exported state dict is exactly torchvision's minus fc
    return Backbone(net, feature_dim, "resnet")


def _timm_vit(spec: BackboneSpec, small_input: bool, drop_path_rate: float, image_size: int) -> Backbone:
    import timm  # imported here so that ResNet-only users do not pay for it

    kwargs = dict(pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                  img_size=image_size, dynamic_img_size=True)
    if small_input:
        kwargs["patch_size"] = 4
    net = timm.create_model(spec.timm_name, **kwargs)
    return Backbone(net, net.num_features, "vit")


def build_backbone(name: str, small_input: bool = False, drop_path_rate: float = 0.0,
                   image_size: int = 224, zero_init_residual: bool = False) -> Backbone:
    """Build the named backbone with its classifier removed; the feature is pooled (ResNet) or CLS (ViT).

    ``zero_init_residual`` starts every residual block's last batch norm at zero (Barlow Twins' choice).
    """
    spec = backbone_spec(name)
    if spec.family == "vit":
        if zero_init_residual:
            raise ValueError(f"model.zero_init_residual applies to ResNets only, not '{name}'")
        return _timm_vit(spec, small_input, drop_path_rate, image_size)
    if spec.widen > 1:
        net = WideResNet50(spec.widen, small_input, zero_init_residual)
        backbone = Backbone(net, net.feature_dim, "resnet")
    else:
        backbone = _torchvision_resnet(name, small_input, zero_init_residual)
    if drop_path_rate > 0:
        raise ValueError(f"model.drop_path_rate={drop_path_rate} applies to ViT backbones only, not '{name}'")
    return backbone
