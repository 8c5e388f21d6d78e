"""The speed tool at tiny settings: interleaved workers for whole models (eager, ONNX Runtime, a training step) and
backbones, a failing worker reported as a row, the stock-twin ratio, and the script that measures another commit."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

from yolo_plugins.tools.export_matrix import FP32
from yolo_plugins.tools.speed import Spec, format_markdown, measure, stock_twin

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("speed")


def test_stock_twin():
    assert stock_twin("yolov8s-transnext.yaml") == "yolov8s.yaml"
    assert stock_twin("yolo11n-seg-repvit_m1_5.yaml") == "yolo11n-seg.yaml"
    assert stock_twin("yolov8s.yaml") is None


def test_spec_rejects_what_cannot_be_measured():
    with pytest.raises(ValueError, match="ONNX Runtime"):
        Spec("yolov8n.yaml", runtime="onnx", mode="train")
    with pytest.raises(ValueError, match="OpenVINO"):
        Spec("transxnet_t", kind="backbone", runtime="openvino")
    with pytest.raises(ValueError, match="runtime must be one of"):
        Spec("yolov8n.yaml", runtime="tensorrt")
    with pytest.raises(ValueError, match="mode"):
        Spec("yolov8n.yaml", mode="fast")


def test_interleaved_workers_at_tiny_settings():
    specs = [
        Spec("yolov8n.yaml", imgsz=64, threads=1),
        Spec("yolov8n-repvit.yaml", imgsz=64, threads=1),
        Spec("yolov8n-repvit.yaml", imgsz=64, threads=1, runtime="onnx"),
        Spec("yolov8n-repvit.yaml", imgsz=64, batch=2, mode="train", threads=1),
        Spec("transxnet_t", kind="backbone", imgsz=64, threads=1, oracle=True),
        Spec("yolov8n-repvitt.yaml", imgsz=64, threads=1),  # misspelt: fails in its worker, the others go on
    ]
    res = measure(specs, rounds=2, warmup=1)
    eager, plugin, onnx, train, backbone, bad = res
    for r in (eager, plugin, onnx, train, backbone):
        assert r.note == "" or r.note.startswith("no oracle"), r.note
        assert len(r.runs) == 2 and r.latency_ms > 0 and r.peak_rss_mb > 100
    # ONNX Runtime computes what eager PyTorch computes: within the export matrix's float32 box tolerance (the exported
    # model has trained-looking weights, so its raw outputs are boxes in pixels)
    assert onnx.max_diff < FP32["box"]
    assert backbone.oracle_ms > 0 and backbone.max_diff < 1e-4  # the naive oracle ran on the same input
    assert plugin.params_m > eager.params_m
    assert bad.latency_ms is None and "not found" in bad.note
    table = format_markdown(res)
    assert f"{plugin.latency_ms / eager.latency_ms:.2f}x" in table  # ratio to the stock twin
    assert f"{onnx.latency_ms / plugin.latency_ms:.2f}x eager" in table


@pytest.mark.export  # OpenVINO comes with the export extra
def test_openvino_runtime_at_tiny_settings():
    """OpenVINO workers, interleaved: the exported models run and compute what eager PyTorch does (each worker
    compares its output with its own eager model); the table gives the ratio to the stock twin in the same runtime."""
    pytest.importorskip("openvino", reason="OpenVINO is in the export extra")
    specs = [
        Spec("yolov8n.yaml", imgsz=64, threads=1, runtime="openvino"),
        Spec("yolov8n-repvit.yaml", imgsz=64, threads=1, runtime="openvino"),
    ]
    stock, ov = measure(specs, rounds=2, warmup=1)
    for r in (stock, ov):
        assert r.note == "" and len(r.runs) == 2 and r.latency_ms > 0, r.note
    # raw outputs are boxes in pixels (trained-looking weights): the export matrix's float32 box tolerance
    assert stock.max_diff < FP32["box"] and ov.max_diff < FP32["box"]
    assert f"{ov.latency_ms / stock.latency_ms:.2f}x" in format_markdown([stock, ov])


def test_models_script_measures_another_commit(tmp_path):
    """``--against REF`` unpacks that commit and measures its plugin models in the same run (here HEAD itself)."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    spec = importlib.util.spec_from_file_location("speed_models", ROOT / "scripts" / "speed_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.md"
    table = mod.main(
        ["--models", "yolov8n-repvit.yaml", "--imgsz", "64", "--rounds", "1", "--warmup", "0",
         "--no-onnx", "--no-train", "--threads", "1", "--against", "HEAD", "--out", str(out)]
    )  # fmt: skip
    assert "yolov8n-repvit.yaml @ HEAD" in table and "this checkout's time" in table
    assert out.read_text() == table
