"""Checkpoints written by yolo-plugins 0.1.0 (tests/data/v0.1.0, made by its make_checkpoints.py with 0.1.0 itself)
load after the package moved its modules, in a fresh process with only ``from ultralytics import YOLO``, with and
without restricted loading, and compute what they computed under 0.1.0."""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data" / "v0.1.0"
NAMES = ("transnext", "transxnet", "repvit", "ca", "timm")


def pickled_globals(path: Path) -> set[str]:
    """ "module.Name" of every global a torch.save() archive's pickle references."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    out, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.add(".".join(strings[-2:]))
    return out


def test_checkpoints_hold_the_old_module_paths():
    """The test data really is 0.1.0's: its pickles name the modules at their 0.1.0 paths."""
    names = set().union(*(pickled_globals(DATA / f"{n}.pt") for n in NAMES))
    assert {"yolo_plugins.transnext.TransNeXt", "yolo_plugins.transxnet.TransXNet", "yolo_plugins.repvit.RepViT",
            "yolo_plugins.context_aggregation.ContextAggregation", "yolo_plugins.timm_backbone.Timm",
            "yolo_plugins.backbone.FeatureInfo"} <= names  # fmt: skip


def test_every_old_path_resolves_and_is_allow_listed():
    import importlib

    from yolo_plugins.integration.patch import _safe_globals

    allowed = _safe_globals(import_packages=True)
    for n in NAMES:
        for name in sorted(g for g in pickled_globals(DATA / f"{n}.pt") if g.startswith("yolo_plugins.")):
            module, _, attr = name.rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
            assert obj.__module__.startswith("yolo_plugins.nn."), name
            assert allowed.get(name) is obj, f"{name} is not in the restricted-loading allow-list"


@pytest.mark.slow
@pytest.mark.parametrize("safe", ["0", "1"])
def test_old_checkpoints_load_and_compute_the_same(safe, tmp_path):
    code = f"""
        import sys, torch
        from ultralytics import YOLO
        x = torch.load({str(DATA / "input.pt")!r})
        for name in {NAMES!r}:
            m = YOLO({str(DATA)!r} + f"/{{name}}.pt").model.float().fuse(verbose=False).eval()
            with torch.no_grad():
                torch.save(m(x)[0], {str(tmp_path)!r} + f"/{{name}}.pt")
        assert "yolo_plugins" in sys.modules
    """
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2", "ULTRALYTICS_SAFE_LOAD": safe}
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert p.returncode == 0, f"STDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    for name in NAMES:
        expected, got = torch.load(DATA / f"{name}.out.pt"), torch.load(tmp_path / f"{name}.pt")
        # same weights and code path as 0.1.0; only the summation order of the thread pool may differ
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5, msg=lambda m: f"{name}: {m}")
