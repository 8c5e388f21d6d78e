"""Any timm backbone in a YAML row (`Timm`) or a derived name (`yolo11n-timm_convnext_atto.yaml`), channels from
timm's feature_info: a matrix of families, errors, weights through timm's mechanism, the cross-check with this
package's RepViT, and one model through the whole Ultralytics life cycle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import fresh_process_output, run_ddp_worker, train_step
from ultralytics.nn import tasks
from ultralytics.utils import ASSETS

from yolo_plugins import CheckpointError, ModelNameError, PluginError, create_backbone

timm = pytest.importorskip("timm", reason="timm is optional (pip install 'yolo-plugins[timm]')")

IMGSZ = 64
ENV = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}


def _run(code: str, cwd, env=None) -> str:
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert p.returncode == 0, f"STDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",  # a CNN with a stride-2 stem output (computed, not returned)
        "mobilenetv3_small_050",  # a mobile network
        "convnext_atto",  # a hierarchical ConvNeXt
        "efficientvit_b0",  # a hierarchical attention network
        "repvit_m0_9",  # timm's port of RepViT
    ],
)
def test_derived_timm_model_builds_runs_and_trains(name, tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    model = YOLO(f"yolov8n-timm_{name}.yaml").model
    bb = model.model[0]
    with torch.device("meta"):
        ref = timm.create_model(name, features_only=True)
    by_stride = dict(zip(ref.feature_info.reduction(), ref.feature_info.channels()))
    assert bb.strides == [4, 8, 16, 32] and bb.channels == [by_stride[s] for s in bb.strides]
    # the neck's first layers read the P3/P4/P5 channels from feature_info
    assert [model.model[i].index for i in (1, 2, 3)] == [1, 2, 3]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, IMGSZ, IMGSZ + 32))
    loss, _ = train_step(model, "detect", IMGSZ)
    assert torch.isfinite(loss).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.parameters())


def test_timm_row_with_options_in_a_yaml():
    cfg = {
        "nc": 3,
        "backbone": [
            [-1, 1, "Timm", ["convnext_atto", {"out_indices": [1, 2, 3], "drop_path_rate": 0.1}]],
            [0, 1, "Feature", [0]],
            [0, 1, "Feature", [1]],
            [0, 1, "Feature", [2]],
        ],
        "head": [[[1, 2, 3], 1, "Detect", ["nc"]]],
    }
    m = tasks.DetectionModel(cfg, verbose=False)
    bb = m.model[0]
    assert bb.strides == [8, 16, 32] and bb.channels == [80, 160, 320]
    assert [c[0].conv.in_channels for c in m.model[-1].cv2] == [80, 160, 320]
    assert create_backbone("timm:convnext_atto").channels == [40, 80, 160, 320]


@pytest.mark.parametrize(
    "name,match",
    [
        ("yolov8n-timm_vit_tiny_patch16_224.yaml", r"strides \[16, 16, 16\].*Single-stride models"),
        ("yolov8n-timm_resnett18.yaml", r"timm has no model 'resnett18'. Did you mean resnet18"),
        ("yolov8n-timm_efficientvit_m0.yaml", r"cannot take a Timm efficientvit_m0 backbone.*stride-8.*16/32 only"),
        ("yolov8n-timm.yaml", r"name the timm model: timm:convnext_tiny"),
    ],
)
def test_errors_say_why(name, match, tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNameError, match=match):
        YOLO(name)


def test_without_timm_the_row_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(PluginError, match=r"pip install 'yolo-plugins\[timm\]'"):
        create_backbone("timm:resnet18")


def _timm_repvit_checkpoint(path):
    """A checkpoint in timm's RepViT layout (random weights, random BN statistics)."""
    torch.manual_seed(0)
    t = timm.create_model("repvit_m0_9", num_classes=1000)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
            torch.nn.init.normal_(m.weight, 1, 0.1), torch.nn.init.normal_(m.bias, 0, 0.1)
    torch.save(t.state_dict(), path)
    return t.eval()


def test_repvit_cross_check_with_timm(tmp_path):
    """The same checkpoint through timm's RepViT and through this package's: identical logits, identical features at
    the same blocks. (timm ends stages 1-3 one block earlier than the official detection code does: its stage
    features are this package's features at out_indices [stage end - 1 for stages 1-3, last].)"""
    from yolo_plugins.nn.repvit import RepViT

    path = tmp_path / "repvit_m0_9_timm.pth"
    t = _timm_repvit_checkpoint(path)
    x = torch.rand(2, 3, 96, 128)
    ours_cls = RepViT("m0_9", weights=str(path), num_classes=1000, distillation=True).eval()
    default = RepViT("m0_9").out_indices
    ours = RepViT("m0_9", weights=str(path), out_indices=[i - 1 for i in default[:3]] + default[3:]).eval()
    theirs = create_backbone("timm:repvit_m0_9", weights=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours_cls.forward_head(ours_cls(x)), t(x), atol=1e-5, rtol=1e-5)
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # an official-layout file is refused by timm's loader with the reason (timm would keep random weights)
    official = tmp_path / "repvit_m0_9_official.pth"
    torch.save({"model": ours_cls.state_dict()}, official)
    with pytest.raises(CheckpointError, match=r"do not fit timm's 'repvit_m0_9'.*own backbone row"):
        create_backbone("timm:repvit_m0_9", weights=str(official))
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        create_backbone("timm:repvit_m0_9", pretrained_file=str(tmp_path / "nope.pth"))


def test_fuse_reparameterises_a_timm_backbone(tmp_path, monkeypatch):
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    model = YOLO("yolov8n-timm_repvit_m0_9.yaml").model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    n_before = sum(1 for _ in model.modules())
    with torch.no_grad():
        before = model(x)[0]
        model.fuse(verbose=False)
        model.fuse(verbose=False)
        after = model(x)[0]
    assert sum(1 for _ in model.modules()) < n_before
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pretrained_offline_says_what_to_place_where(tmp_path):
    out = _run(
        """
        import yolo_plugins
        from yolo_plugins import create_backbone
        try:
            create_backbone("timm:resnet18", pretrained=True)
        except Exception as e:
            print("ERROR", type(e).__name__, e)
        """,
        tmp_path,
        env={**ENV, "HF_HUB_OFFLINE": "1"},
    )
    assert "ERROR CheckpointError" in out and "timm/resnet18" in out and "pretrained_file" in out


@pytest.fixture(scope="module")
def trained_timm(tmp_path_factory):
    from ultralytics import YOLO

    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    root = tmp_path_factory.mktemp("timm-life")
    data = make_dataset(root / "data", DatasetSpec(n_train=8, n_val=4, imgsz=96))
    torch.manual_seed(0)
    YOLO("yolov8n-timm_convnext_atto.yaml").train(
        data=str(data), epochs=1, imgsz=IMGSZ, batch=4, workers=0, device="cpu", plots=False, amp=False,
        project=str(root), name="run", exist_ok=True, verbose=False, seed=0,
    )  # fmt: skip
    best = root / "run" / "weights" / "best.pt"
    assert best.is_file()
    return best, data, root


@pytest.mark.slow
def test_timm_model_life_cycle(trained_timm, tmp_path):
    """Train (fixture), validate, predict, fuse, export to ONNX (onnxruntime agrees), reload best.pt in a fresh
    process under restricted loading, and rebuild in the worker script Ultralytics generates for DDP."""
    from ultralytics import YOLO

    best, data, _ = trained_timm
    model = YOLO(str(best))
    assert 0.0 <= model.val(data=str(data), imgsz=IMGSZ, batch=4, plots=False, device="cpu").box.map <= 1.0
    res = model.predict(ASSETS / "bus.jpg", imgsz=IMGSZ, conf=0.0, device="cpu", verbose=False)[0]
    assert res.boxes.xyxy.shape[1] == 4
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    net = YOLO(str(best)).model.float().fuse(verbose=False).eval()
    with torch.no_grad():
        ref = net(x)[0]
    import onnxruntime as ort

    onnx_path = YOLO(str(best)).export(format="onnx", imgsz=IMGSZ, opset=17, device="cpu", simplify=False)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref.numpy(), atol=2e-3, rtol=1e-3)

    got = fresh_process_output(best, x, tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"}, fuse=True)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_timm_model_ddp_worker_rebuilds(trained_timm, tmp_path):
    _, data, _ = trained_timm
    out = run_ddp_worker(
        "yolov8n-timm_convnext_atto.yaml",
        str(data),
        """
        def train(self):  # stands in for the multi-GPU loop: what a worker has after start-up
            from ultralytics.nn.tasks import DetectionModel
            rebuilt = DetectionModel(self.args.model, nc=5, verbose=False)
            print("WORKER", type(self.model.model[0]).__name__, type(rebuilt.model[0].model).__name__)
        """,
        tmp_path,
    )
    assert "WORKER Timm FeatureListNet" in out


def test_swap_with_a_timm_backbone(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "yolo_plugins.tools.cli",
            "swap",
            "yolo11n.yaml",
            "--backbone",
            "timm:convnext_atto",
            "-o",
            "-",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "[-1, 1, Timm, [convnext_atto]]" in p.stdout and "Timm convnext_atto" not in p.stderr
