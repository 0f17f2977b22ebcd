"""Config loading: unknown keys with suggestions, type/choice/range checks, overrides, round trip."""
import copy
import re

import pytest
import yaml

from twist.config import DEFAULTS, ConfigError, load_config, parse_override, save_config

# A base that passes the consistency checks (the default dataset is 'folder' with an empty path).
OK = ["data.dataset=synthetic"]


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_with_valid_dataset_load_unchanged():
    cfg = load_config(None, OK)
    expected = copy.deepcopy(DEFAULTS)
    expected["data"]["dataset"] = "synthetic"
    assert cfg == expected
    assert cfg is not DEFAULTS and cfg["optim"] is not DEFAULTS["optim"]  # defaults are not shared


# ---- unknown keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, suggestion", [
    ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
    ("train.lr=0.1", "train.lr", "optim.lr"),          # right leaf, wrong section
    ("lr=0.1", "lr", "optim.lr"),
    ("optim.weight_decy=0.1", "optim.weight_decy", "optim.weight_decay"),
    ("model.head.hiden_dim=64", "model.head.hiden_dim", "model.head.hidden_dim"),
    ("optimm.lr=0.1", "optimm", "optim"),              # misspelt section
    ("eval.epochs=3", "eval.epochs", "train.epochs"),
])
def test_unknown_override_key_names_key_and_closest(override, key, suggestion):
    with pytest.raises(ConfigError,
                       match=rf"unknown config key '{re.escape(key)}'; did you mean '{re.escape(suggestion)}'\?"):
        load_config(None, OK + [override])


def test_unknown_key_in_yaml_file_names_file_key_and_suggestion(tmp_path):
    path = _write(tmp_path, "data:\n  dataset: synthetic\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError,
                       match=rf"{re.escape(path)}: unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        load_config(path)


def test_unknown_nested_key_in_yaml_file(tmp_path):
    path = _write(tmp_path, "data: {dataset: synthetic}\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train\.lr'; did you mean 'optim\.lr'\?"):
        load_config(path)


def test_unknown_key_with_nothing_close_has_no_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'zzzzqqq'$"):
        load_config(None, OK + ["zzzzqqq=1"])


# ---- types -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, expected", [
    ("train.epochs=ten", "train.epochs", "an integer"),     # string for int
    ("train.epochs=true", "train.epochs", "an integer"),    # bool for int
    ("train.epochs=1.5", "train.epochs", "an integer"),     # float for int
    ("train.epochs=1e3", "train.epochs", "an integer"),     # YAML 1.2-style float for int
    ("optim.lr=fast", "optim.lr", "a number"),
    ("optim.lr=true", "optim.lr", "a number"),              # bool is not a number
    ("optim.lr=.nan", "optim.lr", "a number"),              # NaN would slip through every range check
    ("train.progress_bar=1", "train.progress_bar", "true or false"),
    ("train.progress_bar=yes please", "train.progress_bar", "true or false"),
])
def test_wrong_type_names_key_and_expected_type(override, key, expected):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must be {expected}"):
        load_config(None, OK + [override])


def test_text_key_given_a_list_in_a_file(tmp_path):
    path = _write(tmp_path, "data:\n  dataset: folder\n  path: [a, b]\n")
    with pytest.raises(ConfigError, match=r"'data.path' must be a string"):
        load_config(path)


def test_wrong_type_in_yaml_file(tmp_path):
    path = _write(tmp_path, "data:\n  dataset: synthetic\n  image_size: '32'\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(path)}: 'data.image_size' must be an integer, got '32'"):
        load_config(path)


def test_int_is_accepted_for_float_and_converted():
    cfg = load_config(None, OK + ["optim.lr=2"])
    assert cfg["optim"]["lr"] == 2.0 and type(cfg["optim"]["lr"]) is float


def test_exponent_without_dot_is_a_number():
    assert load_config(None, OK + ["optim.weight_decay=1e-4"])["optim"]["weight_decay"] == pytest.approx(1e-4)


# ---- choices and ranges -----------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, allowed", [
    ("device=gpu", "device", "auto, cpu, cuda"),
    ("optim.name=rmsprop", "optim.name", "lars, sgd, adam, adamw"),
    ("augment.pipeline=simclr", "augment.pipeline", "barlow, small_gray"),
    ("train.precision=fp8", "train.precision", "fp32, bf16, fp16"),
])
def test_value_outside_choices_names_allowed_values(override, key, allowed):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must be one of {allowed}; got"):
        load_config(None, OK + [override])


@pytest.mark.parametrize("override, key, bounds", [
    ("optim.momentum=1.5", "optim.momentum", r"\[0.0, 1.0\]"),
    ("optim.lr=-0.1", "optim.lr", r"\[0.0, inf\]"),
    ("train.batch_size=1", "train.batch_size", r"\[2, inf\]"),
    ("data.image_size=4", "data.image_size", r"\[8, inf\]"),
    ("augment.rotation=181", "augment.rotation", r"\[0.0, 180.0\]"),
    ("augment.translate=0.6", "augment.translate", r"\[0.0, 0.5\]"),
    ("augment.stroke_width=1.5", "augment.stroke_width", r"\[0.0, 1.0\]"),
    ("model.head.num_classes=1", "model.head.num_classes", r"\[2, inf\]"),
])
def test_out_of_range_names_key_and_bounds(override, key, bounds):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must lie in {bounds}"):
        load_config(None, OK + [override])


@pytest.mark.parametrize("override", ["optim.momentum=1.0", "optim.momentum=0", "train.batch_size=2",
                                      "data.image_size=8", "augment.rotation=180"])
def test_range_bounds_are_inclusive(override):
    load_config(None, OK + [override])


# ---- list shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("[0.5]", "must be a list of 2 numbers"),
    ("[0.1, 0.5, 1.0]", "must be a list of 2 numbers"),
    ("0.5", "must be a list of 2 numbers"),
    ("[a, 1.0]", "must be a list of 2 numbers"),
    ("[true, 1.0]", "must be a list of 2 numbers"),
    ("[0.5, 1.5]", r"values must lie in \[0.0, 1.0\]"),
    ("[-0.1, 1.0]", r"values must lie in \[0.0, 1.0\]"),
    ("[0.9, 0.5]", "must be \\[low, high\\] with low <= high"),
])
def test_crop_scale_shape(value, message):
    with pytest.raises(ConfigError, match=rf"'augment\.crop_scale' {message}"):
        load_config(None, OK + [f"augment.crop_scale={value}"])


def test_crop_scale_valid_list_is_converted_to_floats():
    cfg = load_config(None, OK + ["augment.crop_scale=[0, 1]"])
    assert cfg["augment"]["crop_scale"] == [0.0, 1.0]
    assert all(type(v) is float for v in cfg["augment"]["crop_scale"])


# ---- sections ---------------------------------------------------------------------------------------

def test_section_given_a_scalar_by_override():
    with pytest.raises(ConfigError, match=r"'optim' is a section; expected a mapping, got 0.1"):
        load_config(None, OK + ["optim=0.1"])


def test_nested_section_given_a_scalar_in_file(tmp_path):
    path = _write(tmp_path, "data: {dataset: synthetic}\nmodel:\n  head: 5\n")
    with pytest.raises(ConfigError, match=r"'model\.head' is a section; expected a mapping, got 5"):
        load_config(path)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("5\n", "a number"), ("lr 0.5\n", "a text")])
def test_file_that_is_not_a_mapping(tmp_path, text, kind):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"config file '{path}' holds {kind}, not a mapping of sections") and "data:" in message


def test_leaf_given_a_mapping():
    with pytest.raises(ConfigError, match=r"'optim\.lr' must be a number"):
        load_config(None, OK + ["optim.lr.x=1"])


# ---- override parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, value", [
    ("optim.lr=0.1", "optim.lr", 0.1),
    ("train.progress_bar=true", "train.progress_bar", True),
    ("train.progress_bar=false", "train.progress_bar", False),
    ("augment.crop_scale=[0.2, 1.0]", "augment.crop_scale", [0.2, 1.0]),
    ("train.epochs=3", "train.epochs", 3),
    ("device=cpu", "device", "cpu"),
    ("data.path=", "data.path", ""),
    ("data.path=/a/b=c", "data.path", "/a/b=c"),        # only the first '=' splits
    (" optim.lr =1e-3", "optim.lr", 1e-3),
])
def test_parse_override_types_values_as_yaml(text, key, value):
    parsed_key, parsed = parse_override(text)
    assert parsed_key == key
    assert parsed == value and type(parsed) is type(value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match=r"override 'optim\.lr' must look like dotted\.key=value"):
        load_config(None, OK + ["optim.lr"])


def test_override_with_invalid_yaml_is_an_error():
    with pytest.raises(ConfigError, match=r"override 'augment\.crop_scale=\[0\.2, 1\.0': value is not valid YAML"):
        load_config(None, OK + ["augment.crop_scale=[0.2, 1.0"])


def test_overrides_apply_after_the_file_and_in_order(tmp_path):
    path = _write(tmp_path, "data: {dataset: synthetic}\noptim:\n  lr: 0.3\n  momentum: 0.5\n")
    cfg = load_config(path, ["optim.lr=0.7", "optim.lr=0.9"])
    assert cfg["optim"]["lr"] == 0.9
    assert cfg["optim"]["momentum"] == 0.5                        # from the file
    assert cfg["optim"]["weight_decay"] == DEFAULTS["optim"]["weight_decay"]  # untouched default


# ---- files and consistency --------------------------------------------------------------------------

def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=rf"config file '{re.escape(missing)}' does not exist"):
        load_config(missing)


def test_invalid_yaml_file(tmp_path):
    path = _write(tmp_path, "optim: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(path)}: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# all defaults, please\n", "---\n"])
def test_empty_file_is_refused(tmp_path, text):
    """An empty file would silently mean all defaults, which is never what a file passed on purpose means."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^config file '{re.escape(path)}' is empty: pass a config that sets at "
                                          rf"least the keys it changes"):
        load_config(path, OK)


def test_a_directory_is_not_a_missing_file(tmp_path):
    (tmp_path / "digits.yaml").write_text("data: {dataset: synthetic}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path), OK)
    message = str(err.value)
    assert f"'{tmp_path}' is a directory" in message and "a YAML file" in message and "digits.yaml" in message
    assert "does not exist" not in message


def test_folder_dataset_with_empty_path_is_an_error():
    with pytest.raises(ConfigError, match=r"'data\.path' must name the dataset location when data.dataset is 'folder'"):
        load_config(None, ["data.dataset=folder"])
    assert load_config(None, ["data.dataset=folder", "data.path=/some/where"])["data"]["path"] == "/some/where"


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(None, ["data.dataset=digits", "optim.lr=0.123", "optim.weight_decay=1e-5",
                             "augment.crop_scale=[0.25, 0.75]", "train.progress_bar=false", "data.path='x: y'",
                             "loss.eps=1e-7", "model.backbone=resnet18"])
    path = str(tmp_path / "saved.yaml")
    save_config(cfg, path)
    with open(path) as f:
        assert yaml.safe_load(f) == cfg         # plain YAML, readable without our loader
    again = load_config(path)
    assert again == cfg
    for section in cfg:                          # types survive too (1e-05 stays a float, not a string)
        if isinstance(cfg[section], dict):
            for key, value in cfg[section].items():
                assert type(again[section][key]) is type(value), f"{section}.{key}"
    # And a second round trip writes the same bytes.
    path2 = str(tmp_path / "saved2.yaml")
    save_config(again, path2)
    assert open(path).read() == open(path2).read()


def test_text_keys_take_the_override_verbatim():
    cfg = load_config(None, ["data.dataset=folder", "data.path=2024", "device=cpu"])
    assert cfg["data"]["path"] == "2024"
    cfg = load_config(None, ["data.dataset=folder", "data.path=/data/x: y"])
    assert cfg["data"]["path"] == "/data/x: y"


def test_the_affine_map_belongs_to_the_small_gray_pipeline():
    with pytest.raises(ConfigError, match=r"'augment.shear' belongs to the 'small_gray' pipeline's affine map; "
                                          r"augment.pipeline is 'barlow'"):
        load_config(None, OK + ["augment.pipeline=barlow", "augment.shear=5"])


def test_the_stroke_width_belongs_to_the_small_gray_pipeline():
    with pytest.raises(ConfigError, match=r"'augment.stroke_width' changes grayscale strokes \(the 'small_gray' "
                                          r"pipeline\); augment.pipeline is 'barlow'"):
        load_config(None, OK + ["augment.pipeline=barlow", "augment.stroke_width=0.5"])
