"""Plugin models by bare name, from any folder: shipped YAMLs, derived names, a path that wins, errors listing what
exists; and the benchmark's model lookup, which is the same one."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import YAMLS
from ultralytics import YOLO
from ultralytics.utils.checks import check_yaml

from yolo_plugins import ModelNameError
from yolo_plugins.integration import names
from yolo_plugins.tools.benchmark import resolve_model


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOLO_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_shipped_yamls_found_inside_the_package():
    assert names.shipped_dir().is_dir()
    assert set(names.shipped_models()) == {p.name for p in YAMLS.glob("*.yaml")}
    assert {"yolo26-repvit.yaml", "yolo26-transnext.yaml", "yolo26-transxnet.yaml"} <= set(names.shipped_models())


@pytest.mark.compat
@pytest.mark.parametrize(
    "name,variant",
    [("yolov8n-repvit.yaml", "m0_9"), ("yolo11s-transxnet.yaml", "t"), ("yolo26n-repvit.yaml", "m0_9")],
)
def test_shipped_names_from_an_empty_folder(empty_cwd, name, variant):
    """A shipped YAML by bare name, the scale letter picking the backbone variant, from a folder without YAMLs."""
    if not check_yaml(re.sub(r"(\d+)[nslmx]$", r"\1", name.split("-")[0]) + ".yaml", hard=False):
        pytest.skip("this Ultralytics has no stock model of that generation")
    m = YOLO(name)
    assert m.model.model[0].variant == variant
    assert not any(empty_cwd.glob("*.yaml"))  # nothing written where the user works


@pytest.mark.compat
def test_derived_name_uses_scale_letter_and_cache(empty_cwd):
    m = YOLO("yolov8s-seg-repvit.yaml")
    assert m.task == "segment" and m.model.model[0].variant == "m1_0"  # scale s -> RepViT m1_0
    written = list((empty_cwd / "cache").rglob("yolov8-seg-repvit.yaml"))
    assert len(written) == 1 and "ultralytics-" in written[0].parent.name
    mtime = written[0].stat().st_mtime_ns
    names._DERIVED.clear()
    YOLO("yolov8n-seg-repvit.yaml")  # same unified file, unchanged content: not rewritten
    assert written[0].stat().st_mtime_ns == mtime
    m = YOLO("yolov8n-seg-repvit_m1_5.yaml")  # a fixed variant overrides the scale map
    assert m.model.model[0].variant == "m1_5"


def test_a_file_path_wins(empty_cwd):
    local = empty_cwd / "yolov8n-repvit.yaml"
    local.write_text((YAMLS / "yolov8-repvit.yaml").read_text().replace("nc: 80", "nc: 3"))
    assert YOLO("yolov8n-repvit.yaml").model.yaml["nc"] == 3  # the user's file, not the shipped one
    assert YOLO("yolov8n-pose-repvit.yaml").model.model[0].variant == "m0_9"  # no such local file: derived


@pytest.mark.parametrize(
    "name,expected",
    [
        ("yolov8n-repvitt.yaml", ["not a yolo-plugins model", "Did you mean yolov8-repvit.yaml", "yolov8-ca.yaml"]),
        ("yolo99n-repvit.yaml", ["'yolo99.yaml' is not a stock model", "yolo11n-seg-repvit.yaml"]),
        ("yolov8n-p6-repvit.yaml", ["stride-64 level", "without -p6"]),
        ("yolov8n-repvit-seg.yaml", ["must come last", "yolov8-seg-repvit.yaml"]),
        ("yolov8n-seg-repvit_m9.yaml", ["no variant 'm9'", "m0_9, m1_0"]),
    ],
)
def test_unknown_names_say_what_exists(empty_cwd, name, expected):
    with pytest.raises(FileNotFoundError) as e:  # also a FileNotFoundError, as for stock names
        YOLO(name)
    assert isinstance(e.value, ModelNameError)
    for text in expected:
        assert text in str(e.value), str(e.value)
    with pytest.raises(ModelNameError):
        resolve_model(name)  # the benchmark's lookup is the same one


def test_non_model_names_keep_ultralytics_behaviour(empty_cwd):
    with pytest.raises(FileNotFoundError) as e:
        check_yaml("my-data.yaml")
    assert not isinstance(e.value, ModelNameError) and "my-data.yaml" in str(e.value)
    assert check_yaml("coco8.yaml").endswith("coco8.yaml")  # stock lookups untouched
    assert check_yaml("yolo11n-seg-repvit.yaml", hard=False)  # soft lookups find plugin names too


def test_resolve_model_for_the_benchmark(empty_cwd):
    assert resolve_model("yolo11n.yaml") == "yolo11n.yaml"
    assert resolve_model("yolov8n-repvit.yaml") == "yolov8n-repvit.yaml"
    assert resolve_model("yolo11n-obb-transxnet.yaml") == "yolo11n-obb-transxnet.yaml"
    path = empty_cwd / "mine.yaml"
    path.write_text((YAMLS / "yolov8-ca.yaml").read_text())
    assert resolve_model(str(path)) == str(path.resolve())


def test_cache_falls_back_when_not_writable(empty_cwd, monkeypatch):
    blocked = empty_cwd / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("YOLO_PLUGINS_CACHE_DIR", str(blocked))
    names._DERIVED.clear()
    path = check_yaml("yolov8-obb-transxnet.yaml")
    assert os.path.isfile(path) and not path.startswith(str(blocked))
    m = YOLO("yolov8n-obb-transxnet.yaml")
    with torch.no_grad():
        m.model.eval()(torch.rand(1, 3, 64, 64))


@pytest.mark.compat
@pytest.mark.parametrize("name", names.shipped_models())
def test_every_shipped_yaml_builds_and_runs(name, empty_cwd):
    """Each shipped YAML by bare name at scale n, forward at 64x96 (where the installed Ultralytics has the stock
    modules of that YOLO generation)."""
    stock = name.split("-")[0] + ".yaml"
    if not check_yaml(stock, hard=False):
        pytest.skip(f"this Ultralytics has no {stock}")
    m = YOLO(re.sub(r"^(yolo(?:v)?\d+)", r"\1n", name))
    m.model.eval()
    with torch.no_grad():
        y = m.model(torch.rand(1, 3, 64, 96))
    assert y is not None and m.model.stride.tolist() == [8.0, 16.0, 32.0]
