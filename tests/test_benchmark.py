"""The benchmark main job on a tiny setting: two models, one epoch; CSV, Markdown and plot hold the numbers."""

from __future__ import annotations

import csv
import json

import pytest

from yolo_plugins.benchmark import BenchmarkConfig, run_benchmark


@pytest.mark.slow
def test_tiny_benchmark(tmp_path):
    cfg = BenchmarkConfig(
        models=["yolov8n.yaml", "yolov8n-ca.yaml"],
        epochs=1,
        imgsz=64,
        batch=4,
        n_train=8,
        n_val=4,
        workers=0,
        device="cpu",
        project=str(tmp_path),
        name="tiny",
        latency_runs=2,
    )
    logs = []
    rows, md = run_benchmark(cfg, log=logs.append)
    run = tmp_path / "tiny"
    assert [r["model"] for r in rows] == ["yolov8n", "yolov8n-ca"]
    with open(run / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    for r, t in zip(rows, table):
        m = json.loads((run / r["model"] / "metrics.json").read_text())
        assert t["model"] == m["model"] and float(t["mAP50-95"]) == m["mAP50-95"] and float(t["cpu_ms"]) == m["cpu_ms"]
        assert m["cpu_ms"] > 0 and m["params_M"] > 1 and m["GFLOPs"] > 0 and 0 <= m["mAP50-95"] <= 1
        assert f"| {m['model']} | {m['params_M']} |" in md.read_text()
    assert rows[1]["params_M"] > rows[0]["params_M"]  # CA adds parameters
    assert (run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("training" in line for line in logs)
    logs.clear()
    run_benchmark(cfg, log=logs.append)  # a re-run skips finished models
    assert sum("skipped" in line for line in logs) == 2
