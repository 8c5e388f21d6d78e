"""Ultralytics' precision paths end to end, as a GPU user takes them, emulated on the CPU (see tests/gpu_emulation.py):
predict/val with ``half=True`` (AutoBackend casts the fused model with ``model.half()``), the half-precision
validation during AMP training of the releases that cast the model (8.3.x) and of those that autocast it (8.4.x),
mixed-precision training with the GradScaler (``amp=True``; ``amp="bf16"`` where the release has it), the optimizer
hook's extra parameter groups (``lr_scale``) under the GradScaler, and half-precision exports (ONNX through
Ultralytics' exporter on the CPU; the GPU's traced ``.half()`` TorchScript/ONNX graphs built by hand, since the exporter
refuses FP16 TorchScript on a CPU).

TransNeXt is the family that failed in half precision before (RuntimeError "mat1 and mat2 must have the same dtype" at
the attention's output projection): its cases run by default; the other families and the slow end-to-end training runs
with ``-m precision``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_emulation import cpu_amp, gpu_half_backend, gpu_validation

FAMILIES = ["transnext", "transxnet", "repvit", "ca"]
DEFAULT = ["transnext"]  # failed in half precision before; the other families with -m precision


def _families(default=DEFAULT):
    return [f if f in default else pytest.param(f, marks=pytest.mark.precision) for f in FAMILIES]


def _ultralytics_version() -> tuple[int, ...]:
    from ultralytics import __version__

    return tuple(int(p) for p in __version__.split(".")[:3])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), DatasetSpec(n_train=4, n_val=2, imgsz=64))


@pytest.fixture(scope="module")
def bus():
    from ultralytics.utils import ASSETS

    return str(Path(ASSETS) / "bus.jpg")


def _finite(values) -> bool:
    """Every number of a dict of numbers, a tensor or a list of numbers is finite."""
    if isinstance(values, dict):
        values = list(values.values())
    return bool(torch.isfinite(torch.as_tensor(values, dtype=torch.float64)).all())


def _half_model_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


# --------------------------------------------------------------------------------------------- predict / val in half


@pytest.mark.parametrize("family", _families())
def test_predict_and_val_in_half_precision(family, data, bus, monkeypatch, tmp_path):
    """``predict``/``val`` with ``half=True``: AutoBackend casts the fused model with ``model.half()`` and feeds it
    half-precision images, as on a GPU. Boxes and metrics come out finite (how close half precision stays to float32,
    layer by layer, is tests/test_precision.py's; scores after NMS of an untrained model are too close to each other to
    compare)."""
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    seen = gpu_half_backend(monkeypatch)
    model = YOLO(f"yolov8n-{family}.yaml")
    half = model.predict(bus, half=True, imgsz=64, device="cpu", conf=0.0, max_det=20, verbose=False)
    assert seen["half_models"] == 1 and _half_model_dtypes(model.predictor.model.model) == {torch.float16}
    assert torch.isfinite(half[0].boxes.data).all() and len(half[0].boxes)
    metrics = model.val(data=str(data), half=True, imgsz=64, batch=2, device="cpu", plots=False, verbose=False)
    assert seen["half_models"] == 2
    assert _finite(metrics.results_dict)


@pytest.mark.parametrize("family", _families())
def test_validation_in_half_precision_as_8_3_does(family):
    """What Ultralytics 8.3.x's validator does during AMP training on a GPU, step by step: ``model.half()`` on the EMA
    model, images ``.half() / 255``, forward, the loss on the half-precision predictions, NMS. (The real 8.3.x code runs
    it in ``test_amp_training`` under ``.ci/compat``.)"""
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg

    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # Ultralytics < 8.3.200
        from ultralytics.utils.ops import non_max_suppression

    model = YOLO(f"yolov8n-{family}.yaml").model
    model.args = get_cfg()
    ema = copy.deepcopy(model).eval().half()
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(2, 3, 64, 64, generator=g) * 255).round()
    batch = {
        "img": img.half() / 255,
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.4, 0.6, 0.2, 0.2]]),
    }
    with torch.no_grad():
        preds = ema(batch["img"])
        loss = ema.loss(batch, preds)[1]
        out = non_max_suppression(preds, conf_thres=0.001, iou_thres=0.7, max_det=300)
    head = preds[0] if isinstance(preds, (list, tuple)) else preds
    assert head.dtype == torch.float16 and torch.isfinite(head).all()
    values = loss.values() if isinstance(loss, dict) else [loss]
    assert all(torch.isfinite(torch.as_tensor(v).float()).all() for v in values)
    assert len(out) == 2


# ------------------------------------------------------------------------------------------------ AMP training (slow)


def _train(model, data, tmp_path, **kw):
    return model.train(
        data=str(data), epochs=1, imgsz=64, batch=4, nbs=4, workers=0, device="cpu", plots=False, project=str(tmp_path),
        name="amp", exist_ok=True, verbose=False, **kw,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.precision
@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.compat) if f == "transnext" else f for f in FAMILIES]
)  # .ci/compat runs TransNeXt against every release (8.3's validator casts with model.half())
def test_amp_training(family, data, monkeypatch, tmp_path):
    """A short training with ``amp=True`` through Ultralytics' trainer, its autocast and GradScaler pointed at the CPU,
    and its validation deciding as on a GPU: 8.3.x casts the EMA model with ``model.half()`` (the path that failed for
    TransNeXt), 8.4.190 autocasts it with half-precision images. The loss is scaled (2**16), the optimizer steps through
    the scaler with the ``lr_scale`` groups, validation metrics and the saved checkpoint are finite."""
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    amp = cpu_amp(monkeypatch, torch.float16)
    val = gpu_validation(monkeypatch)
    model = YOLO(f"yolov8n-{family}.yaml")
    groups = {}
    model.add_callback("on_train_epoch_start", lambda t: groups.update(lr={g["lr"] for g in t.optimizer.param_groups}))
    _train(model, data, tmp_path, optimizer="SGD", lr0=0.01)
    trainer = model.trainer
    assert trainer.amp and amp["autocast"] >= 1 and amp["scaler_steps"] >= 1 and amp["scales"][0] == 2.0**16
    assert val["calls"] >= 1 and val["image_dtypes"] == {torch.float16}
    assert val["half"] is True or val["quantize"] == 16  # 8.3: args.half (model.half()); later: quantize=16
    if family == "transnext":  # lr_scale: a quarter of the rate in groups of their own
        assert {round(v / min(groups["lr"]), 6) for v in groups["lr"]} >= {1.0, 4.0}
    assert _finite(trainer.metrics) and _finite(trainer.tloss)
    ckpt = torch.load(trainer.best, weights_only=False)
    assert all(torch.isfinite(p.float()).all() for p in ckpt["ema" if ckpt.get("ema") else "model"].parameters())


@pytest.mark.slow
@pytest.mark.precision
def test_amp_bf16_training(data, monkeypatch, tmp_path):
    """``amp="bf16"`` (Ultralytics 8.4.x): autocast in bfloat16, no loss scaling (bfloat16 has float32's range)."""
    if _ultralytics_version() < (8, 4):
        pytest.skip("amp='bf16' is new in Ultralytics 8.4")
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    amp = cpu_amp(monkeypatch, torch.bfloat16)
    model = YOLO("yolov8n-transnext.yaml")
    _train(model, data, tmp_path, amp="bf16", val=False)
    assert amp["autocast"] >= 1 and amp["scales"] == [None] * amp["scaler_steps"]  # scaler disabled
    assert _finite(model.trainer.tloss)


# ------------------------------------------------------------------------------------- GradScaler and lr_scale groups


def _optimizer(model, name: str):
    from ultralytics.cfg import get_cfg
    from ultralytics.engine.trainer import BaseTrainer

    trainer = BaseTrainer.__new__(BaseTrainer)  # only build_optimizer is used: no dataset, no run folder
    trainer.args = get_cfg()
    return trainer.build_optimizer(model, name=name, lr=0.01, momentum=0.9, decay=5e-4)


class _Stepper:
    """The parts of a trainer that Ultralytics' ``BaseTrainer.optimizer_step`` uses (unscale, clip, step, update)."""

    def __init__(self, model, optimizer, scaler):
        from ultralytics.engine.trainer import BaseTrainer

        self.model, self.optimizer, self.scaler, self.ema = model, optimizer, scaler, None
        self.device = torch.device("cpu")
        self.step = BaseTrainer.optimizer_step.__get__(self)


def _amp_step(model, name: str, amp: bool, fused: bool = False, poison: bool = False):
    """One training step of ``model`` (loss on a generated batch) as the trainer does it, with AMP (CPU autocast in
    float16, GradScaler) or in float32; returns the optimizer, the scaler and the parameters before the step."""
    from conftest import task_batch
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    model.args = get_cfg()
    model.train()
    opt = _optimizer(model, name)
    if fused:  # what Ultralytics builds on a GPU for Adam/AdamW: fused=True (PyTorch also has it on the CPU)
        for g in opt.param_groups:
            g["fused"] = True
        opt.defaults["fused"] = True
        opt._step_supports_amp_scaling = True
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        loss, _ = model.loss(task_batch("detect", model, 64))
    scaler.scale(loss.sum()).backward()
    if poison:  # an overflow in one parameter of an lr_scale group: the whole step must be skipped
        p = next(
            p for g in opt.param_groups if "*" in g.get("param_group", "") for p in g["params"] if p.grad is not None
        )
        p.grad.view(-1)[0] = float("inf")
    _Stepper(model, opt, scaler).step()
    return opt, scaler, before


def _ca_model():
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n-ca.yaml").model
    for m in model.modules():
        if type(m).__name__ == "ContextAggregation":
            m.lr_scale = 0.25  # extra parameter groups at a quarter of the rate (like TransNeXt's, on a small model)
    return model


def test_grad_scaler_with_lr_scale_groups():
    """Ultralytics' optimizer step under the GradScaler (unscale, clip, step, update) with the extra ``lr_scale``
    groups: SGD's update of every group (the scaled ones included) equals the float32 step's within float16 rounding
    (an unscaled group would move 2**16 times too far), the scaled groups move at a quarter of the rate, and an
    overflow in a scaled group skips the step of every group and halves the scale."""
    ref = _ca_model()
    amp = copy.deepcopy(ref)
    opt_ref, _, start = _amp_step(ref, "SGD", amp=False)  # start: the parameters of both before the step
    opt_amp, scaler, _ = _amp_step(amp, "SGD", amp=True)
    assert {round(g["lr"], 6) for g in opt_amp.param_groups} == {0.01, 0.0025}
    assert any("*0.25" in g.get("param_group", "") for g in opt_amp.param_groups) and scaler.get_scale() == 2.0**16
    start_amp = {id(p): start[id(q)] for p, q in zip(amp.parameters(), ref.parameters())}
    for g_ref, g_amp in zip(opt_ref.param_groups, opt_amp.param_groups):
        name = g_amp.get("param_group", "")  # Ultralytics < 8.4 names only the groups yolo-plugins adds
        assert g_ref.get("param_group", "") == name and g_ref["lr"] == g_amp["lr"]
        moved_ref = torch.cat([(p.detach() - start[id(p)]).flatten() for p in g_ref["params"]])
        moved_amp = torch.cat([(p.detach() - start_amp[id(p)]).flatten() for p in g_amp["params"]])
        assert moved_ref.abs().max() > 0
        ratio = (moved_amp.norm() / moved_ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(moved_amp, moved_ref, dim=0).item()
        assert 0.9 < ratio < 1.1 and cos > 0.98, f"{name}: AMP update x{ratio:.3f}, cosine {cos:.3f}"

    poisoned = _ca_model()
    _, scaler, start = _amp_step(poisoned, "SGD", amp=True, poison=True)
    assert all(torch.equal(p, start[id(p)]) for p in poisoned.parameters())  # the step is skipped everywhere
    assert scaler.get_scale() == 2.0**15


def test_fused_adamw_with_lr_scale_groups():
    """On a GPU Ultralytics builds Adam/AdamW with ``fused=True``, whose kernel receives the scaler's inf flag: the
    extra groups keep ``fused`` and an overflow in one of them skips the whole step."""
    model = _ca_model()
    opt, scaler, start = _amp_step(model, "AdamW", amp=True, fused=True)
    assert all(g.get("fused") for g in opt.param_groups)
    assert any(not torch.equal(p, start[id(p)]) for p in model.parameters())
    poisoned = _ca_model()
    _, scaler, start = _amp_step(poisoned, "AdamW", amp=True, fused=True, poison=True)
    assert all(torch.equal(p, start[id(p)]) for p in poisoned.parameters())
    assert scaler.get_scale() == 2.0**15


# ---------------------------------------------------------------------------------------------- half-precision export


def _check_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """Detection outputs (B, 4 + nc, anchors): boxes and class scores each within ``tol`` of their own scale (the
    boxes' pixel coordinates would hide errors of the scores)."""
    out = out.float()
    for rows, name in ((slice(0, 4), "boxes"), (slice(4, None), "scores")):
        a, b = out[:, rows], ref[:, rows]
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < tol, f"{what}: {name} differ by {err:.1e} of their scale"


@pytest.mark.slow
@pytest.mark.precision
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_exports(family, tmp_path, monkeypatch):
    """``export(half=True)``: on the CPU, ONNX (Ultralytics 8.4 converts the float32 graph to float16, float32 inputs
    and outputs) runs in ONNX Runtime close to the float32 model; the exporter's GPU branch (``model.half()`` and a
    half-precision input traced; it refuses FP16 TorchScript on a CPU) taken on the CPU through a GPU-like device:
    the float16 TorchScript and ONNX files run in half precision close to float32. Tolerance:
    float16 keeps 11 bits; whole models measured at 1.1e-2 of the scale at most (tests/test_precision.py)."""
    ort = pytest.importorskip("onnxruntime")
    from compile_helpers import shorten_backbones
    from gpu_emulation import gpu_exporter
    from ultralytics import YOLO

    from yolo_plugins.tools.precision import perturb

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yolo = YOLO(f"yolov8n-{family}.yaml")
    perturb(shorten_backbones(yolo.model))  # two blocks per stage: every code path, minutes less of tracing
    model = copy.deepcopy(yolo.model).fuse(verbose=False).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]

    def run_onnx(f, dtype):
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.to(dtype).numpy()})[0])

    if family == "transnext" and _ultralytics_version() >= (8, 4):  # the CPU's float16 conversion
        f = yolo.export(format="onnx", half=True, imgsz=64, device="cpu", verbose=False)
        _check_close(run_onnx(f, torch.float32), ref, 4e-2, "ONNX half (CPU conversion)")
        Path(f).unlink()

    gpu_exporter(monkeypatch)
    f = yolo.export(format="torchscript", half=True, imgsz=64, device="cpu", verbose=False)
    ts = torch.jit.load(f)
    assert {p.dtype for p in ts.parameters()} == {torch.float16}
    with torch.no_grad():
        out = ts(x.half())
    assert out.dtype == torch.float16
    _check_close(out, ref, 4e-2, "TorchScript half (GPU branch)")
    f = yolo.export(format="onnx", half=True, imgsz=64, device="cpu", verbose=False)
    out = run_onnx(f, torch.float16)  # float16 in and out (PyTorch's addcmul exported as float32 made it unloadable)
    assert out.dtype == torch.float16
    _check_close(out, ref, 4e-2, "ONNX half (GPU branch)")


def test_addcmul_exports_as_half_precision_onnx(tmp_path):
    """``layers.addcmul`` (TransXNet's LayerScale and 1x1 depthwise convs, TransNeXt's window aggregation): PyTorch's
    ONNX exporter writes ``torch.addcmul`` with a float32 constant, which made every float16 graph unloadable
    ("Type parameter (T) of Optype (LayerNormalization) bound to different types"); written out while exporting, the
    graph stays float16 and computes the same as eager."""
    ort = pytest.importorskip("onnxruntime")
    from yolo_plugins.nn.layers import addcmul

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
            self.norm = torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(addcmul(self.b, x, self.w))

    m = Scale().half().eval()
    x = torch.randn(2, 8).half()
    torch.onnx.export(m, (x,), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        ref = m.norm(torch.addcmul(m.b, x, m.w))
    assert out.dtype == torch.float16 and (out.float() - ref.float()).abs().max() < 1e-2
