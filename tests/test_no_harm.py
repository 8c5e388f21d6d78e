"""No harm: with the plugin registered, every stock Ultralytics detection YAML builds the same model.

For every detection YAML of v3, v5, v6, v8, v9, v10, 11, 12, 26 and every scale it declares: same parameter count and
the same weights for the same seed, registered (with the row stream active, the path plugin YAMLs take) and
unregistered (parsed on the meta device, cheap); and for the main file of each family at its first scale, the same
weights and output for the same seed (real build).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
import ultralytics
from ultralytics.nn import tasks

import yolo_plugins
from yolo_plugins.integration.compat import load_yaml
from yolo_plugins.integration.patch import recording

CFG = Path(ultralytics.__file__).parent / "cfg" / "models"
FAMILIES = ("v3", "v5", "v6", "v8", "v9", "v10", "11", "12", "26")


def _stock_detection_cfgs():
    out = []
    for fam in FAMILIES:
        for f in sorted((CFG / fam).glob("*.yaml")):
            d = load_yaml(f)
            if any(w in f.stem for w in ("world", "yoloe", "rtdetr")) or tasks.guess_model_task(d) != "detect":
                continue
            for i, s in enumerate(d.get("scales") or [None]):
                out.append(pytest.param(f, s, i == 0, id=f"{f.stem}{'-' + s if s else ''}"))
    return out


CASES = _stock_detection_cfgs()


def _build(cfg, seed=0):
    torch.manual_seed(seed)
    return tasks.DetectionModel(copy.deepcopy(cfg), ch=3, verbose=False)


def test_case_list_covers_every_family():
    assert {c.values[0].parent.name for c in CASES} == set(FAMILIES)
    assert len(CASES) >= 40


def _structure(cfg, stream: bool):
    """Parse a YAML on the meta device (no weight init, no compute): module tree, parameter names and shapes."""
    ctx = recording() if stream else contextlib.nullcontext()
    with torch.device("meta"), ctx:
        seq, save = tasks.parse_model(copy.deepcopy(cfg), ch=3, verbose=False)
    return save, [(n, type(m)) for n, m in seq.named_modules()], [(n, p.shape) for n, p in seq.named_parameters()]


@pytest.mark.parametrize("path,scale,first", CASES)
def test_stock_yaml_structure_unchanged(path, scale, first):
    """Every scale: registered (row stream forced on) parses to the same layers and parameters as stock."""
    cfg = load_yaml(path)
    cfg["scale"] = scale
    yolo_plugins.unregister()
    try:
        ref = _structure(cfg, stream=False)
    finally:
        yolo_plugins.register()
    assert _structure(cfg, stream=True) == ref
    assert _structure(cfg, stream=False) == ref


SMALLEST = [
    "v3/yolov3-tiny.yaml",
    "v5/yolov5.yaml",
    "v6/yolov6.yaml",
    "v8/yolov8.yaml",
    "v9/yolov9t.yaml",
    "v10/yolov10n.yaml",
    "11/yolo11.yaml",
    "12/yolo12.yaml",
    "26/yolo26.yaml",
]


@pytest.mark.compat
@pytest.mark.slow
@pytest.mark.parametrize(
    "path,scale,first",
    [c for c in CASES if c.values[2] and f"{c.values[0].parent.name}/{c.values[0].name}" in SMALLEST],
)
def test_stock_yaml_same_weights_and_output(path, scale, first):
    """Main file of every family, first scale: same seed gives the same weights and output, registered or not."""
    cfg = load_yaml(path)
    cfg["scale"] = scale
    yolo_plugins.unregister()
    try:
        ref = _build(cfg)
    finally:
        yolo_plugins.register()
    with recording() as rows:  # forces the plugin row stream even though no plugin module is named
        new = _build(cfg)
    assert len(rows) == len(ref.model)
    assert sum(p.numel() for p in new.parameters()) == sum(p.numel() for p in ref.parameters())
    ref_sd, new_sd = ref.state_dict(), new.state_dict()
    assert list(ref_sd) == list(new_sd)
    assert all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd)
    x = torch.rand(1, 3, 64, 64)
    ref.eval(), new.eval()
    with torch.no_grad():
        a, b = ref(x), new(x)
    a, b = (a[0], b[0]) if isinstance(a, (tuple, list)) else (a, b)
    if isinstance(a, dict):
        a, b = next(iter(a.values())), next(iter(b.values()))
    assert torch.equal(a, b)
