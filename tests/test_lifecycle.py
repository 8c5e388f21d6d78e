"""Every YAML in model_yamls/ through the Ultralytics life cycle at a small size on the embedded dataset: train one
epoch, validate, predict on a real photo, export to ONNX (onnxruntime matches PyTorch) and TorchScript, and reload
best.pt in a fresh process that only does `from ultralytics import YOLO`."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from compile_helpers import short_variants
from conftest import YAMLS
from ultralytics.utils import ASSETS

IMGSZ = 64
ALL_YAMLS = sorted(p.name for p in YAMLS.glob("*.yaml"))
# `pytest -n 2 --dist loadgroup`: the YAMLs split into two groups of similar cost, each trained once in its worker
GROUPS = {"lifecycle-a": ("transnext", "repvit"), "lifecycle-b": ("transxnet", "ca")}


def group_of(name: str) -> str:
    return next((g for g, fams in GROUPS.items() if any(name.endswith(f"-{f}.yaml") for f in fams)), "lifecycle-b")


# the default run takes one generation (every family, every head the YAMLs use); the other generations run with
# `pytest -m lifecycle` in .ci/run (the default run has to stay under 10 minutes on 2 cores)
CORE = [n for n in ALL_YAMLS if n.startswith("yolo11-")]
REST = [n for n in ALL_YAMLS if n not in CORE]


def grouped(names):
    return [
        pytest.param(n, marks=[pytest.mark.xdist_group(group_of(n))] + ([pytest.mark.lifecycle] if n in REST else []))
        for n in names
    ]


def scaled_name(name: str) -> str:
    """yolov8-repvit.yaml -> yolov8n-repvit.yaml (scale n)."""
    return re.sub(r"^(yolo(?:v\d+|\d+))", r"\1n", name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    return str(make_dataset(tmp_path_factory.mktemp("data"), DatasetSpec(n_train=8, n_val=4, imgsz=96)))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Train each YAML once (lazily) and remember its best.pt."""
    from ultralytics import YOLO

    root, cache = tmp_path_factory.mktemp("runs"), {}

    def get(name):
        if name not in cache:
            label = scaled_name(name)[:-5]
            torch.manual_seed(0)
            # the other generations differ from yolo11 in the neck and head: their backbones are built short (two
            # blocks per stage, the same code), the full ones run through the life cycle with yolo11 (default run)
            with short_variants() if name in REST else contextlib.nullcontext():
                YOLO(str(YAMLS / scaled_name(name))).train(
                    data=data,
                    epochs=1,
                    imgsz=IMGSZ,
                    batch=4,
                    workers=0,
                    device="cpu",
                    plots=False,
                    amp=False,
                    project=str(root),
                    name=label,
                    exist_ok=True,
                    verbose=False,
                    seed=0,
                )
            cache[name] = root / label / "weights" / "best.pt"
            assert cache[name].is_file()
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", grouped(ALL_YAMLS))
def test_train_val_predict_export(name, trained, data):
    from ultralytics import YOLO

    best = trained(name)
    model = YOLO(str(best))
    metrics = model.val(data=data, imgsz=IMGSZ, batch=4, plots=False, verbose=False, device="cpu")
    assert 0.0 <= metrics.box.map <= 1.0
    res = model.predict(ASSETS / "bus.jpg", imgsz=IMGSZ, conf=0.0, device="cpu", verbose=False)[0]
    assert res.orig_shape == (1080, 810) and res.boxes.xyxy.shape[1] == 4

    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    net = YOLO(str(best)).model.float().fuse(verbose=False).eval()
    with torch.no_grad():
        ref = net(x)[0].numpy()

    import onnxruntime as ort

    onnx_path = YOLO(str(best)).export(format="onnx", imgsz=IMGSZ, opset=17, device="cpu", simplify=False)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=2e-3, rtol=1e-3)

    ts_path = YOLO(str(best)).export(format="torchscript", imgsz=IMGSZ, device="cpu")
    ts = torch.jit.load(ts_path)
    with torch.no_grad():
        np.testing.assert_allclose(
            ts(x)[0].numpy() if isinstance(ts(x), (tuple, list)) else ts(x).numpy(), ref, atol=2e-3, rtol=1e-3
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "group, subset",
    [
        pytest.param(g, sub, marks=[pytest.mark.xdist_group(g)] + ([pytest.mark.lifecycle] if sub == "rest" else []))
        for g in GROUPS
        for sub in ("core", "rest")
    ],
)
def test_best_pt_reloads_in_fresh_process(group, subset, trained, tmp_path):
    """A fresh interpreter (only `from ultralytics import YOLO`) reloads every best.pt: same predictions."""
    from ultralytics import YOLO

    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    torch.save(x, tmp_path / "x.pt")
    names = CORE if subset == "core" else REST
    paths = [str(trained(n)) for n in names if group_of(n) == group]
    assert paths
    expected = {}
    for p in paths:
        net = YOLO(p).model.float().eval()
        with torch.no_grad():
            expected[p] = net(x)[0]
    code = f"""
        import sys, torch
        from ultralytics import YOLO
        x = torch.load({str(tmp_path / "x.pt")!r})
        out = {{}}
        for p in {paths!r}:
            with torch.no_grad():
                out[p] = YOLO(p).model.float().eval()(x)[0]
        torch.save(out, {str(tmp_path / "y.pt")!r})
    """
    # same thread count as here: bit-equal outputs need the same summation order (oneDNN splits work by threads)
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    got = torch.load(tmp_path / "y.pt")
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0)
