"""Exporting plugin models (yolo_plugins.integration.export, yolo_plugins.tools.export_matrix).

Default run (fast): the refusal hook on Ultralytics' Exporter (installed, restored, declared per module, one message,
stock models untouched) and the matrix tool's pieces. ``pytest -m export`` (excluded from the default run; needs
``pip install 'yolo-plugins[export]'``): every family x every export format at a reduced, non-square size, exported
with ``YOLO(...).export``, loaded back with ``YOLO(exported)``, predicted, and compared with the fused PyTorch model
within the format's tolerance (``yolo_plugins.tools.export_matrix.CASES``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
import yaml
from compile_helpers import short_variants
from conftest import ScaledConv, toy_yaml

import yolo_plugins
from yolo_plugins.integration import export as E
from yolo_plugins.tools import export_matrix as M


# --------------------------------------------------------------------------------------------- the refusal hook
def _exporter():
    from ultralytics.engine.exporter import Exporter

    return Exporter


@pytest.fixture
def unregistered():
    yolo_plugins.unregister()
    yield
    yolo_plugins.unregister()
    yolo_plugins.register()


@pytest.mark.compat
def test_hook_installed_and_restored(unregistered):
    Exporter = _exporter()
    original = vars(Exporter)["__call__"]
    assert not getattr(original, "yolo_plugins", False)
    yolo_plugins.register()
    yolo_plugins.register()  # idempotent
    wrapped = vars(Exporter)["__call__"]
    assert wrapped.yolo_plugins and wrapped.__wrapped__ is original
    yolo_plugins.unregister()
    yolo_plugins.unregister()
    assert vars(Exporter)["__call__"] is original


def test_hook_waits_for_the_exporter_module():
    """The plugin never imports Ultralytics' exporter early; the wrapper is in place once it loads."""
    code = textwrap.dedent(
        """
        import sys
        import yolo_plugins
        assert yolo_plugins.is_registered()
        assert "ultralytics.engine.exporter" not in sys.modules, "imported early"
        from ultralytics.engine.exporter import Exporter
        assert getattr(vars(Exporter)["__call__"], "yolo_plugins", False)
        yolo_plugins.unregister()
        assert not getattr(vars(Exporter)["__call__"], "yolo_plugins", False)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.slow
def test_registered_while_the_exporter_module_loads(tmp_path):
    """A process whose first import is the exporter registers the plugin while that module loads: the first export
    runs through the ``on_export_start`` callback, later ones through the wrapper, and each hands its own arguments
    to graph paths for its duration only."""
    code = textwrap.dedent(
        """
        from ultralytics.engine.exporter import Exporter  # nn.tasks loads inside: the plugin registers then
        import torch
        import yolo_plugins
        from ultralytics import YOLO
        from yolo_plugins.nn.layers import export_is_dynamic
        print("AT_IMPORT", getattr(vars(Exporter)["__call__"], "yolo_plugins", False), yolo_plugins.is_registered())
        seen, trace = [], torch.jit.trace
        torch.jit.trace = lambda *a, **k: (seen.append(export_is_dynamic()), trace(*a, **k))[1]
        for dynamic in (True, False, True):
            YOLO("yolov8n-repvit.yaml").export(format="torchscript", imgsz=64, device="cpu", dynamic=dynamic)
        print("SEEN", seen, export_is_dynamic(), getattr(vars(Exporter)["__call__"], "yolo_plugins", False))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AT_IMPORT False True" in out.stdout  # registered, the wrapper pending
    assert "SEEN [True, False, True] False True" in out.stdout, out.stdout[-2000:]


@pytest.fixture
def refusing_toy(toy_modules, monkeypatch, tmp_path):
    """A toy detection YAML whose ScaledConv rows refuse NCNN, LiteRT/TFLite, and OpenVINO in int8."""
    table = {
        "ncnn": "its op has no NCNN layer; export to onnx or openvino instead",
        "litert": lambda m, args: f"too wide for LiteRT ({m.c2} channels); export to onnx" if m.c2 > 8 else None,
        "openvino:8": "int8 ruins it; export format=openvino in fp32 or fp16",
    }
    monkeypatch.setattr(ScaledConv, "export_unsupported", table, raising=False)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_yaml()))
    return path


@pytest.mark.parametrize(
    "fmt, kwargs, message",
    [
        ("ncnn", {}, r"format='ncnn'\. ScaledConv: its op has no NCNN layer; export to onnx or openvino instead$"),
        ("NCNN", {}, r"format='ncnn'"),
        ("tflite", {}, r"format='litert'\. ScaledConv: too wide for LiteRT \(\d+ channels\); export to onnx$"),
        ("openvino", {"quantize": 8}, r"format='openvino' with quantize=8\. ScaledConv: int8 ruins it"),
    ],
)
def test_declared_refusal_is_one_clear_message(refusing_toy, monkeypatch, fmt, kwargs, message):
    from ultralytics import YOLO

    Exporter = _exporter()

    def never(*a, **k):
        raise AssertionError("the converter ran")

    for name in ("export_ncnn", "export_litert", "export_openvino"):
        monkeypatch.setattr(Exporter, name, never)
    model = YOLO(str(refusing_toy))
    with pytest.raises(E.ExportRefusedError, match=message) as e:
        model.export(format=fmt, imgsz=32, device="cpu", **kwargs)
    assert str(e.value).startswith("yolo-plugins cannot export this model to ") and "\n" not in str(e.value)


def test_refusal_depends_on_arguments(refusing_toy):
    from types import SimpleNamespace

    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(str(refusing_toy), verbose=False)
    assert E.refusals(model, "openvino", SimpleNamespace(quantize=None)) == []
    assert E.refusals(model, "openvino", SimpleNamespace(quantize=16)) == []
    assert [n for n, _ in E.refusals(model, "openvino", SimpleNamespace(quantize=8))] == ["ScaledConv"]
    assert E.refusals(model, "onnx") == [] and E.refusals(model, "torchscript") == []
    E.check_exportable(model, "onnx")  # no error
    assert E.normalise_format("TFLite") == "litert" and E.normalise_format("trt") == "engine"
    _exporter()  # misspellings are corrected against the exporter's formats (known once it is loaded)
    assert E.normalise_format("onnxx") == "onnx"  # Ultralytics corrects misspellings the same way


def test_graph_paths_see_the_export_arguments(refusing_toy, monkeypatch, tmp_path):
    """The exporter hook hands the export's arguments to graph paths for the export's duration (TransXNet keeps the
    runtime's own resize of its position tables in a dynamic=True export), and TransNeXt, whose graph is built for one
    size, refuses dynamic=True in every format where it means free height and width."""
    from types import SimpleNamespace

    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    from yolo_plugins.nn.layers import export_is_dynamic

    seen = []
    forward = ScaledConv.forward
    monkeypatch.setattr(ScaledConv, "forward", lambda self, x: (seen.append(export_is_dynamic()), forward(self, x))[1])
    monkeypatch.chdir(tmp_path)
    for dynamic in (True, False):
        model = YOLO(str(refusing_toy))
        seen.clear()  # the forwards that built the model
        model.export(format="onnx", imgsz=32, device="cpu", dynamic=dynamic)
        assert seen and set(seen) == {dynamic} and not export_is_dynamic()

    model = DetectionModel("yolov8n-transnext.yaml", verbose=False)
    static, dynamic = SimpleNamespace(quantize=None, dynamic=False), SimpleNamespace(quantize=None, dynamic=True)
    for fmt in ("onnx", "engine", "openvino", "litert", "coreml"):
        assert E.refusals(model, fmt, static) == []
        assert [n for n, _ in E.refusals(model, fmt, dynamic)] == ["AggregatedAttention"]
    with pytest.raises(E.ExportRefusedError, match="dynamic=True would fail at run time on any other size"):
        E.check_exportable(model, "onnx", dynamic)


def test_export_started_by_the_callback_records_constants(monkeypatch):
    """A process whose exporter module loaded before the plugin registered exports through the ``on_export_start``
    callback, which comes after the exporter's dry run: for ExecuTorch/LiteRT the callback runs the model once more,
    so ``torch.export`` finds TransXNet's merged kernels recorded; they are dropped at ``on_export_end``. Stock models
    and other formats get no extra forward."""
    from types import SimpleNamespace

    from yolo_plugins.nn import transxnet as X

    class Exporter:  # what the callback reads of Ultralytics' Exporter
        def __init__(self, model, fmt):
            self.model, self.im, self.ends = model, torch.randn(1, 16, 10, 10), []
            self.args = SimpleNamespace(format=fmt, dynamic=False, quantize=None)

        def add_callback(self, event, fn):
            assert event == "on_export_end"
            self.ends.append(fn)

    hook = E.ExporterHook()
    monkeypatch.setattr(hook, "patch", lambda: None)  # the hook itself stays as the session installed it
    blk = X.TransXNetBlock(16, pos_size=5).eval().requires_grad_(False)
    calls = []
    blk.register_forward_hook(lambda *a: calls.append(1))
    for fmt, forwards in (("executorch", 1), ("tflite", 1), ("onnx", 0)):
        calls.clear()
        exporter = Exporter(nn.Sequential(blk), fmt)
        hook.on_event(exporter)
        recorded = "_yolo_plugins_export_constants" in blk.mlp.__dict__
        exporter.ends[0](exporter)
        assert (len(calls), recorded) == (forwards, bool(forwards)), fmt
        assert "_yolo_plugins_export_constants" not in blk.mlp.__dict__
    stock = nn.Sequential(nn.Conv2d(16, 16, 3))
    stock.register_forward_hook(lambda *a: calls.append(1))
    calls.clear()
    exporter = Exporter(stock, "executorch")
    hook.on_event(exporter)
    exporter.ends[0](exporter)
    assert not calls


def test_mnn_export_installs_nothing(refusing_toy, monkeypatch):
    """MNN's converter imports a telemetry logger that runs ``pip install -U aliyun-log-python-sdk`` in the user's
    Python when that package is missing (it pins protobuf<6, breaking onnx). While a model with plugin modules is
    exported to MNN and the package is missing, that import fails instead (mnnconvert converts without it), and is
    possible again afterwards; a stock model, another format, or an install that has the package: nothing changes."""
    import importlib
    from types import SimpleNamespace

    from ultralytics.nn.tasks import DetectionModel

    monkeypatch.delitem(sys.modules, E.MNN_LOGGER, raising=False)
    monkeypatch.setattr(E, "_missing", lambda name: name == "aliyun.log")  # a fresh install: the package is missing
    plugin = DetectionModel(str(refusing_toy), verbose=False)
    stock = DetectionModel("yolov8n.yaml", verbose=False)
    mnn = SimpleNamespace(format="mnn", quantize=None, dynamic=False)
    with E.exporting(plugin, mnn):
        assert E.MNN_LOGGER in sys.modules and sys.modules[E.MNN_LOGGER] is None  # what makes its import fail
        with pytest.raises(ImportError, match="halted"):
            importlib.import_module(E.MNN_LOGGER)
    assert E.MNN_LOGGER not in sys.modules
    for model, args in ((stock, mnn), (plugin, SimpleNamespace(format="onnx", quantize=None, dynamic=False))):
        with E.exporting(model, args):
            assert E.MNN_LOGGER not in sys.modules
    monkeypatch.setattr(E, "_missing", lambda name: False)  # the package installed: MNN's logger is left alone
    with E.exporting(plugin, mnn):
        assert E.MNN_LOGGER not in sys.modules


@pytest.mark.compat
def test_stock_models_untouched(registered, tmp_path, monkeypatch):
    """A stock model exports as before: no refusal in any format, and TorchScript gives the same outputs with the hook
    installed as without it."""
    from ultralytics import YOLO
    from ultralytics.engine.exporter import export_formats
    from ultralytics.nn.tasks import DetectionModel

    stock = DetectionModel("yolov8n.yaml", verbose=False)
    assert all(E.refusals(stock, f) == [] for f in export_formats()["Argument"][1:])
    assert not any(hasattr(m, E.ATTR) for m in stock.modules())
    x = torch.rand(1, 3, 64, 64)
    monkeypatch.chdir(tmp_path)  # a model built from a YAML exports into the working directory
    outs = []
    for registered_now in (True, False):
        (yolo_plugins.register if registered_now else yolo_plugins.unregister)()
        torch.manual_seed(0)
        f = YOLO("yolov8n.yaml").export(format="torchscript", imgsz=64, device="cpu")
        outs.append(torch.jit.load(f)(x))
        Path(f).unlink()
    yolo_plugins.register()
    assert torch.equal(outs[0], outs[1])


# ----------------------------------------------------------------------------------------------- the matrix tool
def test_cases_table_is_consistent():
    keys = [c.key for c in M.CASES]
    assert len(keys) == len(set(keys))
    from ultralytics.engine.exporter import export_formats

    formats = set(export_formats()["Argument"])
    assert all(c.format in formats for c in M.CASES)
    assert {"torchscript", "onnx", "openvino", "ncnn", "mnn", "saved_model", "litert", "coreml", "executorch"} <= {
        c.format for c in M.CASES
    }
    with pytest.raises(ValueError, match="unknown export case 'onx'"):
        M.case_by_key("onx")


def test_trained_looking_weights_spread_the_outputs():
    """Perturbed weights with BN statistics from real photos: class scores spread over (0, 1) (Ultralytics' init puts
    them near 1e-4, where no export difference would show) and the model stays finite."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    M.trained_looking(model, seed=0, images=M._images(4, 64))
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    model.eval()
    with torch.no_grad():
        out = model(M._images(1, 64, seed=1))[0]
    scores = out[:, 4:]
    assert torch.isfinite(out).all() and scores.max() > 0.3 and scores.min() < 0.05


def test_markdown_table():
    rows = [
        M.Row("yolov8n-repvit", (64, 96), "onnx", "ok", 1e-4, 1e-7, size_mb=12.3, latency_ms=4.5, detections=3),
        M.Row("yolov8n-repvit", (64, 96), "ncnn", "refused", note="yolo-plugins cannot export this model to ..."),
    ]
    md = M.format_markdown(rows, header="# t")
    assert "### 64x96" in md and "| yolov8n-repvit | onnx | ok | 1.0e-04 px / 1.0e-07 | 12.3 | 4.5 | 3 |" in md
    assert "**refused**" in md and "- yolov8n-repvit / ncnn (refused): yolo-plugins cannot export" in md
    rows[0].status = "differs"  # judged again with the current tolerances when read back
    back = M.rows_from_json(M.rows_to_json(rows))
    assert back[0].status == "ok" and back[0].imgsz == (64, 96) and back[1].status == "refused"


# ------------------------------------------------------------------------------------ the matrix (pytest -m export)
# every family and a timm row; the n scale, every TransNeXt and TransXNet stage cut to two blocks (the same code;
# tracing and converting the full backbones took most of this matrix's time); a non-square size (multiple of the
# stride 32). The 640 matrix in docs/deployment.md exports the full models.
FAMILIES = {
    "repvit": "yolov8n-repvit.yaml",
    "transxnet": "yolov8n-transxnet.yaml",
    "transnext": "yolov8n-transnext.yaml",
    "ca": "yolov8n-ca.yaml",
    "timm": "yolo11n-timm_convnext_atto.yaml",
}
IMGSZ = (64, 96)
# formats that take a minute or more per export even at this size: run on one family (RepViT, the family built for
# deployment), the cheap formats on every family
SLOW = {
    "openvino-int8",
    "saved_model",
    "litert",
    "executorch",
    "openvino-fp16",
    "onnx-simplify",
    "onnx-dynamic",
    "coreai",
}
# slow cases that also run on one other family: where the 640 matrix found failures (ContextAggregation's 1x1 convs on
# its pooled context broke LiteRT's converter; TransNeXt and TransXNet refuse SavedModel: onnx2tf cannot convert them;
# a dynamic ONNX is predicted at the photo's own letterboxed size: TransXNet resizes its position tables there,
# TransNeXt refuses dynamic=True; TransXNet's merged kernels reach ExecuTorch as constants only through the
# exporter's dry run)
ALSO = {
    ("ca", "litert"),
    ("transxnet", "executorch"),
    ("transnext", "executorch"),
    ("transnext", "litert"),
    ("transnext", "saved_model"),
    ("transxnet", "saved_model"),
    ("transxnet", "onnx-dynamic"),
    ("transnext", "onnx-dynamic"),
}
# known failures (none today; a format that cannot work is refused by the module's export_unsupported instead)
XFAIL: dict[tuple[str, str], str] = {}


def _matrix_params():
    out = []
    for fam, name in FAMILIES.items():
        for case in M.CASES:
            if case.key in SLOW and fam != "repvit" and (fam, case.key) not in ALSO:
                continue
            marks = [pytest.mark.export, pytest.mark.xdist_group(f"export-{fam}")]
            reason = XFAIL.get((fam, case.key)) or XFAIL.get((fam, "*"))
            if reason:
                marks.append(pytest.mark.xfail(strict=False, reason=reason))
            out.append(pytest.param(name, case.key, marks=marks, id=f"{fam}-{case.key}"))
    return out


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export-matrix")


@pytest.fixture(scope="module")
def calibration_data(matrix_dir):
    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    return str(make_dataset(matrix_dir / "data", DatasetSpec(n_train=8, n_val=8, imgsz=128)))


@pytest.mark.parametrize("name, key", _matrix_params())
def test_export_matrix(name, key, matrix_dir, calibration_data):
    case = M.case_by_key(key)
    missing = M.missing_modules(case)
    if missing:
        if os.environ.get("YOLO_PLUGINS_EXPORT_STRICT") == "1":  # .ci/export installed the extra: nothing may skip
            pytest.fail(f"the export extra is installed, yet {key} lacks {missing}")
        pytest.skip(f"not installed: {missing} (pip install 'yolo-plugins[export]')")
    with short_variants():
        pt = M.prepare_checkpoint(name, matrix_dir / "checkpoints")
    row = M.run_case(pt, case, IMGSZ, matrix_dir / "runs", data=calibration_data, repeats=1)
    assert row.status != "failed", row.note
    if row.status == "refused":  # by design: one clear message naming the module and what to use instead
        assert row.note.startswith("yolo-plugins cannot export this model to") and "instead" in row.note
        return
    assert row.ok, f"{row.status}: box {row.box_diff} px, score {row.score_diff} ({row.note})"
    assert row.size_mb > 0.1
    if case.runs:
        assert row.detections is not None and row.latency_ms > 0


# ------------------------------------------------------------------------------------ graphs the converters read
def test_transxnet_traced_graph_fits_ncnn():
    """TransXNet's traced graph (what pnnx converts for NCNN) has no ``addcmul`` (pnnx has none), no 5-d
    ``unflatten`` (NCNN has none), calls the stage output norms as functions (pnnx crashed on the unused stride-4
    GroupNorm module of a YOLO neck), and computes what the eager model computes."""
    from yolo_plugins import create_backbone

    torch.manual_seed(0)
    m = create_backbone("transxnet_t").eval()
    for p in m.parameters():
        p.requires_grad_(False)
        p.add_(torch.randn_like(p) * 0.05)  # layer scales and position tables off their zero-ish init
    x = torch.rand(1, 3, 64, 96)

    class LastThree(torch.nn.Module):  # a neck's use: the stride-4 output unused
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, t):
            return tuple(self.b(t)[1:])

    traced = torch.jit.trace(LastThree(m), x, check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aten::addcmul" not in graph and "aten::unflatten" not in graph
    assert "GroupNorm" not in str(traced.graph)  # no module call left for a norm
    with torch.no_grad():
        for a, b in zip(traced(x), m(x)[1:]):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()
