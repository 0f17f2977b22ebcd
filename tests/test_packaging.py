"""The package as pip builds it: its modules, its shipped configs and its console scripts."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from twist.config import ConfigError, load_config
from twist.shipped_configs import resolve_config_path, shipped_config_dir, shipped_config_names

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_package_of_the_tree_is_declared():
    declared = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {"twist.configs", "twist_tools", "twist_detection", "twist_segmentation"}
    for folder, _, files in os.walk(os.path.join(ROOT, "twist")):
        if "__init__.py" in files and "__pycache__" not in folder:
            found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert declared == found


def test_the_declared_licence_is_the_licence_file():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        head = f.read(200)
    assert "Apache License" in head and "Version 2.0" in head


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy of the tree: setuptools leaves build/ beside the sources it builds.
    source, out = tmp_path_factory.mktemp("source") / "twist", tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, cwd=str(out))
    (path,) = out.glob("twist-*.whl")
    return path


def test_the_wheel_holds_the_shipped_configs_and_the_scripts(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    shipped = shipped_config_names()
    assert "demo/digits.yaml" in shipped and "transfer/digit_scenes.yaml" in shipped
    assert {f"twist/configs/{name}" for name in shipped} <= names
    for folder, config in (("twist_detection", "miniature/voc_faster_rcnn_R_18_FPN_digit_scenes.yaml"),
                           ("twist_segmentation", "miniature/fpn_r18_digit_scenes-64x64.py"),
                           ("twist_segmentation", "_base_/fpn_r50_twist.py")):
        assert f"{folder}/configs/{config}" in names
    assert "twist/cli/convert.py" in names and not any(n.startswith("twist_tools/convert") for n in names)
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for script in ("twist-train = twist.cli.train:main", "twist-eval = twist.cli.eval:main",
                   "twist-convert = twist.cli.convert:main", "twist-trials = twist.cli.trials:main"):
        assert script in entry_points


def test_an_installed_twist_finds_its_configs_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import twist.shipped_configs as s; from twist.config import load_config; "
            "print(s.shipped_config_dir()); print(load_config('demo/digits.yaml')['data']['dataset'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(elsewhere), capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, check=True).stdout.split()
    assert out == [str(site / "twist" / "configs"), "digits"]


def test_a_shipped_config_is_found_by_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = os.path.join(shipped_config_dir(), "demo", "digits.yaml")
    assert resolve_config_path("demo/digits.yaml") == shipped == resolve_config_path("configs/demo/digits.yaml")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "digits.yaml").write_text("seed: 3\ndata:\n  dataset: digits\n")
    assert resolve_config_path("demo/digits.yaml") == "demo/digits.yaml"  # a file of that name comes first
    assert load_config("demo/digits.yaml")["seed"] == 3
    with pytest.raises(ConfigError, match="'demo/nothing.yaml' does not exist here, nor among the shipped configs"):
        load_config("demo/nothing.yaml")
    # a path that climbs is the user's, never a shipped name
    assert resolve_config_path("configs/../demo/digits.yaml") == "configs/../demo/digits.yaml"
    assert resolve_config_path("../configs/demo/digits.yaml") == "../configs/demo/digits.yaml"
