from twist.models.backbones import Backbone, build_backbone
from twist.models.heads import TwistHead
from twist.models.twin import TwinModel, build_model

__all__ = ["Backbone", "build_backbone", "TwistHead", "TwinModel", "build_model"]
