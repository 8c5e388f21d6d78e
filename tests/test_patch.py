"""register()/unregister(): exact round trip, all or nothing, a clean refusal naming what is missing, both shapes of
Ultralytics' restricted-loading allow-list, and an autoload hook that never leaves Ultralytics worse off."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import ultralytics.utils.checks as checks
from ultralytics.nn import tasks

import yolo_plugins
from yolo_plugins import IncompatibleUltralyticsError
from yolo_plugins.integration import patch
from yolo_plugins.integration.compat import SUPPORTED_ULTRALYTICS, in_supported_range


def ultralytics_state() -> dict:
    """Every object the patch may replace, by identity (plus copies of the allow-list containers)."""
    safe = getattr(tasks, "_SafeLoad", None)
    from ultralytics.engine.trainer import BaseTrainer

    state = {
        "tasks": dict(vars(tasks)),
        "BaseModel": dict(vars(tasks.BaseModel)),
        "BaseTrainer": dict(vars(BaseTrainer)),
        "check_file": checks.check_file,
    }
    if safe is not None:
        state["_SafeLoad"] = dict(vars(safe))
        for attr in ("_registry", "_globals"):
            container = vars(safe).get(attr)
            state[attr] = (
                None if container is None else (dict(container) if isinstance(container, dict) else list(container))
            )
    return state


@pytest.fixture
def unregistered():
    """The plugin unregistered for the test (re-registered afterwards)."""
    yolo_plugins.unregister()
    yield ultralytics_state()
    yolo_plugins.unregister()
    yolo_plugins.register()


def _same(a: dict, b: dict) -> bool:
    for key in a:
        if isinstance(a[key], dict) and key in ("tasks", "BaseModel", "BaseTrainer", "_SafeLoad"):
            if a[key].keys() != b[key].keys() or any(a[key][k] is not b[key][k] for k in a[key]):
                return False
        elif a[key] != b[key] if key in ("_registry", "_globals") else a[key] is not b[key]:
            return False
    return True


@pytest.mark.compat
def test_round_trip_restores_every_object(unregistered):
    before = unregistered
    assert not yolo_plugins.is_registered() and "ContextAggregation" not in vars(tasks)
    yolo_plugins.register()
    yolo_plugins.register()  # idempotent
    assert tasks.parse_model.__wrapped__ is before["tasks"]["parse_model"]
    assert tasks.BaseModel.__dict__["fuse"].__wrapped__ is before["BaseModel"]["fuse"]
    assert checks.check_file.__wrapped__ is before["check_file"]
    from ultralytics.engine.trainer import BaseTrainer

    assert BaseTrainer.__dict__["build_optimizer"].__wrapped__ is before["BaseTrainer"]["build_optimizer"]
    assert isinstance(vars(tasks)["RepViT"], type)
    yolo_plugins.unregister()
    yolo_plugins.unregister()  # idempotent
    assert _same(before, ultralytics_state())
    with pytest.raises(KeyError):  # stock Ultralytics cannot build plugin YAMLs
        tasks.DetectionModel({"nc": 1, "backbone": [[-1, 1, "RepViT", []]], "head": []}, verbose=False)


@pytest.mark.compat
def test_missing_internal_is_refused_before_anything_changes(unregistered, monkeypatch):
    monkeypatch.delattr(tasks, "initialize_weights")
    before = ultralytics_state()
    with pytest.raises(IncompatibleUltralyticsError) as e:
        yolo_plugins.register()
    msg = str(e.value)
    assert "tasks.initialize_weights is missing" in msg and re.search(r"ultralytics \d+\.\d+\.\d+", msg)
    assert SUPPORTED_ULTRALYTICS in msg and "Nothing was changed" in msg
    assert _same(before, ultralytics_state()) and not yolo_plugins.is_registered()


def test_parse_model_without_the_locals_is_refused(unregistered, monkeypatch):
    def parse_model(d, ch, verbose=True):
        return globals()

    monkeypatch.setattr(tasks, "parse_model", parse_model)
    with pytest.raises(IncompatibleUltralyticsError, match=r"parse_model has no local\(s\) \['width'"):
        yolo_plugins.register()
    assert tasks.parse_model is parse_model


@pytest.mark.compat
def test_failure_half_way_restores_everything(unregistered, monkeypatch):
    """The last hook fails while installing: every hook installed before it is taken back."""
    real = patch._hooks

    class Broken:
        what, required = "a hook that breaks", True

        def problems(self):
            return []

        def install(self):
            raise AttributeError("simulated: internal changed shape")

        def uninstall(self):
            raise AssertionError("never installed, never uninstalled")

    monkeypatch.setattr(patch, "_hooks", lambda: [*real(), Broken()])
    with pytest.raises(IncompatibleUltralyticsError, match="while installing a hook that breaks.*simulated"):
        yolo_plugins.register()
    assert _same(unregistered, ultralytics_state()) and not yolo_plugins.is_registered()
    monkeypatch.setattr(patch, "_hooks", real)
    yolo_plugins.register()  # and a later attempt works
    assert yolo_plugins.is_registered()


def _dict_safe_load():
    """The 8.4.1xx shape: ``_registry``, a dict "module.Name" -> class built by ``_build()``."""

    class SafeLoad:
        _registry = None
        _lock = threading.Lock()

        @classmethod
        def _build(cls):
            return {"torch.nn.modules.conv.Conv2d": torch.nn.Conv2d}

    return SafeLoad, "_registry"


def _list_safe_load():
    """The earlier 8.4 shape: ``_globals``, a list of classes and (class, "module.Name") pairs."""

    class SafeLoad:
        _globals = None

        @classmethod
        def _build(cls):
            return [torch.nn.Conv2d, (torch.nn.Conv2d, "torch.nn.modules.conv.Conv2d")]

    return SafeLoad, "_globals"


def _plugin_entries(container) -> set:
    items = container.items() if isinstance(container, dict) else [e[::-1] for e in container if isinstance(e, tuple)]
    return {name for name, _ in items if name.startswith("yolo_plugins.")}


@pytest.mark.parametrize("make", [_dict_safe_load, _list_safe_load], ids=["dict", "list"])
@pytest.mark.parametrize("prebuilt", [False, True], ids=["lazy", "prebuilt"])
def test_allow_list_both_shapes(unregistered, monkeypatch, make, prebuilt):
    """Plugin classes join the allow-list in either shape, built later (through _build) or already built (in
    place); unregister() takes exactly them out again."""
    safe, attr = make()
    build, stock = vars(safe)["_build"], safe._build()
    if prebuilt:
        setattr(safe, attr, safe._build())
    monkeypatch.setattr(tasks, "_SafeLoad", safe, raising=False)
    yolo_plugins.register()
    container = getattr(safe, attr) if prebuilt else safe._build()
    assert {"yolo_plugins.nn.repvit.RepViT", "yolo_plugins.nn.backbone.FeatureInfo"} <= _plugin_entries(container)
    yolo_plugins.unregister()
    assert vars(safe)["_build"] is build and safe._build() == stock
    if prebuilt:
        assert getattr(safe, attr) == stock  # plugin entries out, stock ones kept


def test_unknown_allow_list_shape_warns_and_registers(unregistered, monkeypatch):
    class Odd:
        _registry = "not a container"

        @classmethod
        def _build(cls):
            return {}

    monkeypatch.setattr(tasks, "_SafeLoad", Odd, raising=False)
    with pytest.warns(UserWarning, match=r"restricted-loading allow-list \(tasks._SafeLoad\) is left alone"):
        yolo_plugins.register()
    assert yolo_plugins.is_registered() and Odd._registry == "not a container"


def test_supported_range_is_the_declared_dependency():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"ultralytics{SUPPORTED_ULTRALYTICS}"' in pyproject
    lo = SUPPORTED_ULTRALYTICS.split(",")[0].removeprefix(">=")
    assert in_supported_range(lo) and in_supported_range("8.4.100") and in_supported_range("8.4.999")
    assert not in_supported_range("8.3.99") and not in_supported_range("8.5.0") and not in_supported_range("9.0")


_BREAK_CHECK_YAML = """
import importlib.machinery, sys

class Break:  # as ultralytics.utils.checks finishes loading: a check_yaml that no longer goes through check_file
    def find_spec(self, name, path=None, target=None):
        if name != "ultralytics.utils.checks":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            orig = module.check_yaml
            module.check_yaml = lambda file, suffix=(".yaml", ".yml"), hard=True: orig(file, suffix, hard)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Break())
"""


@pytest.mark.compat
@pytest.mark.slow
def test_autoload_on_an_incompatible_release_leaves_ultralytics_working(tmp_path):
    """Through the autoload hook: one warning, nothing patched, stock models (and restricted loading of a stock
    checkpoint) work; an explicit import says why, naming the version."""
    code = _BREAK_CHECK_YAML + textwrap.dedent(
        f"""
        import os, torch
        from ultralytics import YOLO
        from ultralytics.nn import tasks
        assert not hasattr(tasks.parse_model, "__wrapped__") and "RepViT" not in vars(tasks)
        m = YOLO("yolov8n.yaml")
        m.save({str(tmp_path / "stock.pt")!r})
        os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
        YOLO({str(tmp_path / "stock.pt")!r})
        print("STOCK OK")
        try:
            import yolo_plugins
        except Exception as e:
            print("IMPORT", type(e).__name__, e)
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "STOCK OK" in p.stdout
    assert "IMPORT IncompatibleUltralyticsError" in p.stdout and "check_yaml" in p.stdout
    assert p.stderr.count("yolo-plugins: not registered") == 1


@pytest.mark.compat
def test_running_against_a_supported_release():
    """The compatibility job names the release it installed; every run is inside the declared range."""
    import os

    import ultralytics

    expected = os.environ.get("YOLO_PLUGINS_EXPECT_ULTRALYTICS")
    if expected:
        assert ultralytics.__version__ == expected
    assert in_supported_range(ultralytics.__version__)
