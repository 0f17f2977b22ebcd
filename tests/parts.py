"""The run's parts built from a whole checked config, through their sections as ``build_run`` builds them,
for the tests that start from a config."""
from twist.data.device_augment import ViewPlanner, build_view_planner
from twist.data.transforms import MultiView, build_train_transform
from twist.data.view_specs import AugmentConfig, ViewSpec, view_stages
from twist.methods import build_method
from twist.models import BackboneConfig, TwinModel, build_model


def stage_views(cfg, stage: int = 0) -> list[ViewSpec]:
    """The views of the run's stage ``stage`` (0: from the start; 1: the self-labeling stage, if any)."""
    return view_stages(AugmentConfig.from_config(cfg), cfg["data"]["image_size"], build_method(cfg))[stage][1]


def train_transform(cfg, stage: int = 0) -> MultiView:
    return build_train_transform(AugmentConfig.from_config(cfg), stage_views(cfg, stage))


def view_planner(cfg, stage: int = 0) -> ViewPlanner:
    return build_view_planner(AugmentConfig.from_config(cfg), stage_views(cfg, stage))


def view_sizes(cfg) -> list[int]:
    return [view.size for view in stage_views(cfg)]


def twin_model(cfg) -> TwinModel:
    return build_model(BackboneConfig.from_config(cfg), build_method(cfg))
