"""The benchmark main job at tiny settings: several seeds, a passed-through train argument, mean/spread columns,
error bars and learning curves; pretrained backbones labelled as such; the command line."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch
import yaml

from yolo_plugins import PluginError
from yolo_plugins.tools.benchmark import BenchmarkConfig, _read_curve, run_benchmark
from yolo_plugins.tools.cli import benchmark_extras, main

TINY = dict(epochs=2, imgsz=64, batch=4, n_train=8, n_val=4, workers=0, device="cpu", latency_runs=2)


@pytest.mark.slow
def test_tiny_benchmark_with_seeds_and_a_passed_argument(tmp_path):
    cfg = BenchmarkConfig(
        models=["yolov8n.yaml", "yolov8n-ca.yaml"], seeds=2, project=str(tmp_path), name="tiny",
        extra={"lr0": 0.001, "hsv_h": 0.0}, **TINY,
    )  # fmt: skip
    logs = []
    rows, md = run_benchmark(cfg, log=logs.append)
    run = tmp_path / "tiny"
    assert [r["model"] for r in rows] == ["yolov8n", "yolov8n-ca"]
    with open(run / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    for r, t in zip(rows, table):
        seeds = [json.loads((run / r["model"] / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        maps = [m["mAP50-95"] for m in seeds]
        assert float(t["mAP50-95"]) == pytest.approx(statistics.fmean(maps), abs=1e-4)
        assert float(t["mAP50-95_std"]) == pytest.approx(statistics.stdev(maps), abs=1e-4)
        assert float(t["mAP50-95_min"]) == min(maps) and float(t["mAP50-95_max"]) == max(maps)
        assert t["seeds"] == "2" and float(t["cpu_ms"]) > 0 and float(t["params_M"]) > 1
        for s in (0, 1):  # each seed's Ultralytics run got the passed argument and its seed
            args = yaml.safe_load((run / r["model"] / f"seed{s}" / "args.yaml").read_text())
            assert args["lr0"] == 0.001 and args["hsv_h"] == 0.0 and args["seed"] == s and args["val"] is True
            curve = _read_curve(run / r["model"] / f"seed{s}" / "results.csv")
            assert len(curve["mAP50-95"]) == 2 and all(v > 0 for v in curve["loss"])
    text = md.read_text()
    assert "+-" in text and "seeds=2" in text and "(passed: lr0=0.001 hsv_h=0.0)" in text
    for png in ("results.png", "curves.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["extra"] == {"lr0": 0.001, "hsv_h": 0.0}
    logs.clear()
    run_benchmark(cfg, log=logs.append)  # a re-run skips finished trainings
    assert sum("skipped" in line for line in logs) == 4


@pytest.mark.slow
def test_pretrained_backbones_are_labelled(tmp_path, monkeypatch):
    """--weights imagenet: plugin models start from the published checkpoint (pre-placed here), stock ones are
    unchanged, and every output says so."""
    from yolo_plugins.nn.repvit import RepViT
    from yolo_plugins.weights import find_checkpoint

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("YOLO_PLUGINS_WEIGHTS_DIR", str(folder))
    torch.manual_seed(0)
    ref = RepViT("m0_9", num_classes=1000, distillation=True)
    torch.save({"model": ref.state_dict()}, folder / find_checkpoint("repvit", "m0_9", "imagenet").file)
    cfg = BenchmarkConfig(
        models=["yolov8n.yaml", "yolov8n-repvit.yaml"], seeds=1, weights="imagenet", project=str(tmp_path),
        name="pre", **{**TINY, "epochs": 1},
    )  # fmt: skip
    rows, md = run_benchmark(cfg, log=lambda *_: None)
    assert [(r["model"], r["weights"]) for r in rows] == [
        ("yolov8n", "imagenet"),
        ("yolov8n-repvit+imagenet", "imagenet"),
    ]
    written = yaml.safe_load((tmp_path / "pre" / "models" / "yolov8n-repvit+imagenet.yaml").read_text())
    assert written["backbone"][0][3][1] == "imagenet"
    assert "backbone weights: imagenet" in md.read_text()


def test_command_line(capsys):
    assert benchmark_extras(["lr0=0.001", "mosaic=1.0", "optimizer=SGD", "cos_lr=true"]) == {
        "lr0": 0.001,
        "mosaic": 1.0,
        "optimizer": "SGD",
        "cos_lr": True,
    }
    with pytest.raises(PluginError, match="unexpected argument 'lr0'"):
        benchmark_extras(["lr0"])
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("--seeds SEEDS", "(default: 2)", "--weights WEIGHTS", "key=value", "lr0=0.002"):
        assert text in out
