from twist.models.backbones import Backbone, build_backbone
from twist.models.heads import TwistHead
from twist.models.twin import BackboneConfig, TwinModel, build_model

__all__ = ["Backbone", "BackboneConfig", "build_backbone", "TwistHead", "TwinModel", "build_model"]
