"""Derived models: any stock Ultralytics model with a plugin backbone (`yolo11n-seg-repvit.yaml`), and `swap`.

Every stock YAML of the installed Ultralytics is derived with a plugin backbone and parsed (meta device); every task
and family is built for real, run at 64 px and trained one step; the derivation reproduces the hand-written YAMLs.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import ultralytics
from conftest import YAMLS, train_step
from ultralytics.nn import tasks

from yolo_plugins.errors import ModelNameError, PluginError
from yolo_plugins.integration.compat import load_yaml
from yolo_plugins.integration.derive import (
    POST_BLOCKS,
    backbone_strides,
    derive,
    parse_backbone,
    to_yaml,
)

CFG = Path(ultralytics.__file__).parent / "cfg" / "models"
FAMILIES = ("repvit", "transnext", "transxnet")
STOCK = sorted(CFG.rglob("*.yaml"))


def _task(path: Path) -> str:
    return tasks.guess_model_task(load_yaml(path))


def _meta_parse(cfg: dict) -> torch.nn.Module:
    cfg = {**copy.deepcopy(cfg), "scale": next(iter(cfg.get("scales") or {"": 0}))}
    with torch.device("meta"):
        return tasks.parse_model(cfg, ch=3, verbose=False)[0]


@pytest.mark.compat
@pytest.mark.parametrize("path", STOCK, ids=lambda p: p.stem)
def test_every_stock_yaml_derives_or_says_why(path):
    """Each stock YAML, one family each (rotating): derived and parsed, or refused with a reason (P6, TorchVision)."""
    family = FAMILIES[STOCK.index(path) % len(FAMILIES)]
    stock = load_yaml(path)
    try:
        d = derive(stock, parse_backbone(family), path.name)
    except ModelNameError as e:
        assert ("-p6" in path.stem and "stride-64" in str(e)) or ("TorchVision" in str(e) and "resnet" in path.stem)
        return
    assert "-p6" not in path.stem
    seq = _meta_parse(d.yaml)
    assert type(seq[0]).__name__ == parse_backbone(family).cls.__name__
    assert len(d.yaml["head"]) == len(stock["head"])  # the head is the stock head, remapped
    assert [r[2] for r in d.yaml["head"]] == [r[2] for r in stock["head"]]
    assert d.kept == [r[2] for r in stock["backbone"][d.replaced :]] and set(d.kept) <= set(POST_BLOCKS)
    strides = backbone_strides(stock)
    assert 32 in d.feature_strides and set(d.feature_strides) <= {4, 8, 16, 32}
    assert (4 in d.feature_strides) == ("-p2" in path.stem)
    assert max(s for s in strides if s) == 32


@pytest.mark.parametrize(
    "stock,family,shipped",
    [
        ("yolov8.yaml", "repvit", "yolov8-repvit.yaml"),
        ("yolov8.yaml", "transnext", "yolov8-transnext.yaml"),
        ("yolov8.yaml", "transxnet", "yolov8-transxnet.yaml"),
        ("yolov5.yaml", "repvit", "yolov5-repvit.yaml"),
        ("yolov5.yaml", "transnext", "yolov5-transnext.yaml"),
        ("yolov5.yaml", "transxnet", "yolov5-transxnet.yaml"),
        ("yolo11.yaml", "repvit", "yolo11-repvit.yaml"),
        ("yolo11.yaml", "transxnet", "yolo11-transxnet.yaml"),
        ("yolo26.yaml", "repvit", "yolo26-repvit.yaml"),
        ("yolo26.yaml", "transnext", "yolo26-transnext.yaml"),
        ("yolo26.yaml", "transxnet", "yolo26-transxnet.yaml"),
    ],
)
def test_derivation_reproduces_the_hand_written_yamls(stock, family, shipped):
    """The rule and the hand-written examples agree: same rows, same variant per scale, same scales."""
    path = next(CFG.rglob(stock), None)
    if path is None:
        pytest.skip(f"ultralytics {ultralytics.__version__} has no {stock}")
    d = derive(load_yaml(path), parse_backbone(family), stock).yaml
    ref = load_yaml(YAMLS / shipped)
    assert d["backbone"] == ref["backbone"] and d["head"] == ref["head"] and d["scales"] == ref["scales"]


def _real_cases():
    """Every task x family, built for real: the stock model of each task rotates over the generations that have it."""
    by_task: dict[str, list[Path]] = {}
    for p in STOCK:
        if any(w in p.stem for w in ("world", "yoloe", "rtdetr", "resnet", "-p6", "ghost")):
            continue
        if "n" not in (load_yaml(p).get("scales") or {}):  # single-scale files (yolov9c, yolov10s): meta test only
            continue
        by_task.setdefault(_task(p), []).append(p)
    cases = []
    for task, paths in sorted(by_task.items()):
        mains = [p for p in paths if p.stem.count("-") <= 1 and "p2" not in p.stem] or paths
        for i, family in enumerate(FAMILIES):
            p = mains[(len(task) + i * max(1, len(mains) // 3)) % len(mains)]  # spread over generations
            cases.append(pytest.param(task, p, family, id=f"{task}-{p.stem}-{family}"))
    p2 = [p for p in STOCK if p.stem.endswith("-p2") and "ghost" not in p.stem]
    if p2:
        cases.append(pytest.param("detect", p2[-1], "repvit", id=f"detect-{p2[-1].stem}-repvit"))
    return cases


@pytest.mark.compat
@pytest.mark.parametrize("task,path,family", _real_cases())
def test_derived_name_builds_runs_and_trains(task, path, family, monkeypatch, tmp_path):
    """`YOLO("<stock>n-<family>.yaml")` from an empty folder: built with the task's model class, the head fed with the
    backbone's channels, a forward pass at 64 px, one training step with gradients reaching the backbone."""
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    name = path.name.replace(path.stem, path.stem + "-" + family)
    scaled = name.replace("yolov5", "yolov5n", 1) if "yolov5" in name else None
    if scaled is None:
        import re

        scaled = re.sub(r"^(yolo(?:v)?\d+)(?![nslmx\d])", r"\1n", name)
    torch.manual_seed(0)
    yolo = YOLO(scaled)
    assert yolo.task == task
    model = yolo.model
    bb = model.model[0]
    assert type(bb).__name__ == parse_backbone(family).cls.__name__
    assert bb.variant == parse_backbone(family).cls.scale_variants.get("n", bb.variant)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out is not None
    loss, _ = train_step(model, task, imgsz=64)
    assert torch.isfinite(loss).all() and loss.sum() > 0
    grads = [p.grad for p in bb.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_p6_and_torchvision_refused_with_reason():
    p6 = next(CFG.rglob("yolov8-p6.yaml"))
    with pytest.raises(ModelNameError, match=r"stride-64 level \(a P6 head\).*without -p6"):
        derive(load_yaml(p6), parse_backbone("repvit"), p6.name)
    tv = {"nc": 3, "backbone": [[-1, 1, "TorchVision", [512, "resnet18"]]], "head": [[-1, 1, "Classify", ["nc"]]]}
    with pytest.raises(ModelNameError, match="already has a TorchVision backbone"):
        derive(tv, parse_backbone("repvit"))


def test_head_reading_an_unsupported_stride_is_refused():
    """A head fed by a stride-2 feature cannot take a backbone whose first feature is at stride 4."""
    cfg = {
        "nc": 2,
        "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [32, 3, 8]]],
        "head": [[[0, -1], 1, "Concat", [1]], [-1, 1, "Classify", ["nc"]]],
    }
    with pytest.raises(ModelNameError, match=r"row 3 \(Concat\) reads stock row 0 \(Conv\), its stride-2 output"):
        derive(cfg, parse_backbone("repvit"))


def test_fixed_variant_and_scale_without_letter():
    stock = load_yaml(next(CFG.rglob("yolov8.yaml")))
    d = derive(stock, parse_backbone("transxnet:s"))
    assert d.yaml["backbone"][0] == [-1, 1, "TransXNet", ["s"]] and parse_backbone("transxnet_s").token == "transxnet_s"
    v9 = next(CFG.rglob("yolov9c.yaml"), None)
    if v9 is not None:  # no `scales` table: the letter of the file name (c ~ l)
        assert derive(load_yaml(v9), parse_backbone("repvit"), "yolov9c").yaml["backbone"][0][3] == ["m1_5"]
    with pytest.raises(PluginError, match="Families: repvit, timm, transnext, transxnet"):
        parse_backbone("resnet")
    with pytest.raises(PluginError, match="Valid variants: t, s, b"):
        parse_backbone("transxnet:xl")


def test_yaml_text_round_trips_and_is_commented():
    stock = load_yaml(next(CFG.rglob("yolo11-seg.yaml")))
    d = derive(stock, parse_backbone("repvit"), "Ultralytics' yolo11-seg.yaml")
    text = to_yaml(d, "yolo11-seg-repvit.yaml")
    loaded = yaml_load(text)
    assert loaded["backbone"] == d.yaml["backbone"] and loaded["head"] == d.yaml["head"]
    assert {k: v for k, v in loaded.items() if k not in ("backbone", "head")} == {
        k: v for k, v in stock.items() if k not in ("backbone", "head")
    }
    assert text.startswith("# yolo11-seg-repvit.yaml: Ultralytics' yolo11-seg.yaml with a RepViT backbone")
    assert "kept: SPPF, C2PSA" in text and "# 3: P5/32" in text


def yaml_load(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "yolo_plugins", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_swap_writes_a_file_to_edit_and_never_overwrites(tmp_path):
    p = _cli("swap", "yolo11n-pose.yaml", "--backbone", "transxnet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "yolo11n-pose-transxnet.yaml"
    assert out.is_file() and "wrote" in p.stdout
    text = out.read_text()
    assert "TransXNet" in text and "kpt_shape" in text
    out.write_text(text + "# my edit\n")
    p = _cli("swap", "yolo11n-pose.yaml", "--backbone", "transxnet", cwd=tmp_path)
    assert p.returncode == 2 and "exists" in p.stderr and "Traceback" not in p.stderr
    assert out.read_text().endswith("# my edit\n")  # the user's file is untouched
    p = _cli("swap", "yolov8s.yaml", "--backbone", "repvit:m1_5", "-o", "-", cwd=tmp_path)
    assert p.returncode == 0 and "[-1, 1, RepViT, [m1_5]]" in p.stdout
    p = _cli("swap", "yolov8s-p6.yaml", "--backbone", "repvit", cwd=tmp_path)
    assert p.returncode == 2 and "stride-64" in p.stderr and "Traceback" not in p.stderr
    # the written file builds, from its own folder, at the scale its name says
    from ultralytics import YOLO

    m = YOLO(str(out))
    assert m.task == "pose" and m.model.model[0].variant == "t"
