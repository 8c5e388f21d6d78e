"""The export matrix: every plugin family through every export format Ultralytics offers on a Linux CPU.

For one model (a shipped or derived YAML name) :func:`prepare_checkpoint` writes a ``.pt`` with *trained-looking*
weights (every parameter perturbed, layer scales lifted off their near-zero init, BatchNorm statistics re-estimated
on real images) so that a wrong computation in an exported graph shows in its outputs. :func:`run_case` then does
what a user does: ``YOLO(pt).export(format=...)``, ``YOLO(exported).predict(bus.jpg)``, and compares the exported
model's raw output (``(1, 4 + nc, anchors)``: box centre/size in input pixels, class probabilities) with the fused
PyTorch model's on the same letterboxed photo, within the tolerance of its :class:`Case`; it also times the runtime.
:func:`run_matrix` runs models x sizes x cases and :func:`format_markdown` writes the table
(``scripts/export_matrix.py``, ``docs/deployment.md``).

A format a plugin module cannot be exported to is refused at export time
(:mod:`yolo_plugins.integration.export`): such a case is reported as ``refused`` with the module's reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .trained import photo_crops, trained_looking

__all__ = [
    "CASES",
    "Case",
    "Row",
    "case_by_key",
    "format_markdown",
    "judge",
    "prepare_checkpoint",
    "rows_from_json",
    "rows_to_json",
    "run_case",
    "run_matrix",
    "trained_looking",
]

# ------------------------------------------------------------------------------------------------------------ cases
# Tolerances (|difference| to the fused PyTorch model on the letterboxed bus.jpg): ``box`` in input pixels (the box
# rows of the raw output), ``score`` in class probability. fp32 runtimes reorder float sums (fused kernels, other GEMM
# blocking): measured maxima are 1e-5..2e-3 px at 64-96 px inputs and 3.4e-2 px at 640 (boxes grow with the image),
# below 1e-4 in scores, on trained-looking weights; max(0.05 px, 2e-4 x the longer image side) (0.128 px at 640) and
# 1e-3 keep a margin of >=4x while any wrong operation (a missing bias, a transposed position table) moves boxes by
# pixels. fp16 and int8 round every layer: their largest differences are outliers (for the *stock* YOLOv8n with the
# same trained-looking weights at 640: fp16 OpenVINO 32 px / 0.096, int8 430 px / 1.0), so these precisions are held
# on the *mean* |difference|, with tolerances from the stock model's means at 640 (fp16 0.27 px / 0.0015, int8 19 px
# / 0.125) times ~2-4: fp16 1 px / 0.01, int8 48 px / 0.25. MNN gets the fp16 tolerance: Ultralytics' MNN backend
# runs at precision "low" (fp16 where the CPU has it). int8 equality only catches a broken graph: judge int8 by
# validation mAP.
FP32 = {"box": 0.05, "score": 1e-3, "box_per_side": 2e-4}
FP16 = {"box": 1.0, "score": 1e-2, "stat": "mean", "box_per_side": 0.0}
INT8 = {"box": 48.0, "score": 0.25, "stat": "mean", "box_per_side": 0.0}


@dataclass(frozen=True)
class Case:
    """One export configuration.

    ``key`` names it in tables and tests; ``format`` and ``kwargs`` go to ``YOLO.export``; ``load`` picks a file
    inside the exported folder to load back (glob, e.g. the ``.tflite`` inside a SavedModel folder); ``runs`` is
    False where the runtime does not exist on Linux (conversion and spec checked only); ``modules`` are the Python
    modules the converter and runtime need (the case is skipped, not failed, without them); ``box``/``score`` are
    the tolerances; ``int8`` cases get calibration data.
    """

    key: str
    format: str
    kwargs: dict = field(default_factory=dict)
    box: float = FP32["box"]
    score: float = FP32["score"]
    box_per_side: float = FP32["box_per_side"]  # the box tolerance is at least this x the longer image side
    runs: bool = True
    load: str = ""
    modules: tuple[str, ...] = ()
    int8: bool = False
    note: str = ""
    stat: str = "max"  # "max" or "mean" |difference| is held to the tolerance
    requires: tuple[str, ...] = ()  # version constraints, e.g. "numpy<=2.3.5"


CASES: tuple[Case, ...] = (
    Case("torchscript", "torchscript"),
    Case("onnx", "onnx", modules=("onnx", "onnxruntime")),
    Case("onnx-dynamic", "onnx", {"dynamic": True}, modules=("onnx", "onnxruntime")),
    Case("onnx-simplify", "onnx", {"simplify": True}, modules=("onnx", "onnxruntime", "onnxslim")),
    Case("openvino", "openvino", modules=("openvino",)),
    Case("openvino-fp16", "openvino", {"quantize": 16}, **FP16, modules=("openvino",)),
    Case("openvino-int8", "openvino", {"quantize": 8}, **INT8, modules=("openvino", "nncf"), int8=True),
    Case("ncnn", "ncnn", modules=("ncnn", "pnnx")),
    Case(
        "mnn",
        "mnn",
        **FP16,
        modules=("MNN", "onnx"),
        note="Ultralytics' MNN runtime asks for precision 'low' (fp16 arithmetic where the CPU has it)",
    ),
    Case("saved_model", "saved_model", modules=("tensorflow", "onnx2tf", "tf_keras")),
    Case("litert", "litert", modules=("litert_torch", "ai_edge_litert")),
    Case("executorch", "executorch", modules=("executorch",)),
    Case(
        "coreml",
        "coreml",
        runs=False,
        modules=("coremltools",),
        requires=("numpy<=2.3.5",),  # Ultralytics' own requirement: coremltools 9.0 fails on numpy 2.4
        note="Core ML runs on Apple platforms only",
    ),
    Case(
        "coreai",
        "coreai",
        runs=False,
        modules=("coreai_torch",),
        note="Apple Core AI (.aimodel); its runtime exists on macOS 26+ only (on Linux: 'No such file or directory')",
    ),
)


def case_by_key(key: str) -> Case:
    """The :class:`Case` called ``key``."""
    for c in CASES:
        if c.key == key:
            return c
    raise ValueError(f"unknown export case {key!r}; known: {[c.key for c in CASES]}")


def missing_modules(case: Case) -> list[str]:
    """What ``case`` needs and this environment lacks: modules not installed (``pip install 'yolo-plugins[export]'``)
    and version constraints not met."""
    import re
    from importlib import metadata

    from ultralytics.utils.checks import check_version

    out = [m for m in case.modules if importlib.util.find_spec(m) is None]
    for req in case.requires:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", req).groups()
        try:
            if not check_version(metadata.version(name), spec):
                out.append(f"{req} (installed: {metadata.version(name)})")
        except metadata.PackageNotFoundError:
            out.append(req)
    return out


# ------------------------------------------------------------------------------------------------- trained weights
_images = photo_crops  # real-photo calibration crops (tools.trained)


def prepare_checkpoint(name: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Build ``name`` (a model YAML or ``.pt``), make it :func:`trained_looking` and save it as ``folder/<stem>.pt``
    (Ultralytics' checkpoint format); an existing file is reused."""
    from ultralytics import YOLO

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{Path(name).stem}.pt"
    if out.is_file():
        return out
    torch.manual_seed(seed)
    with _quiet():
        y = YOLO(name)
        trained_looking(y.model, seed)
        y.save(out)
    return out


# ------------------------------------------------------------------------------------------------------------ rows
@dataclass
class Row:
    """One model x size x case. ``status``: ``ok`` (runs within tolerance), ``converted`` (no runtime on this
    platform; spec checked), ``refused`` (declared unsupported; ``note`` is the message), ``differs`` (runs, outside
    tolerance), ``failed`` (the exporter or runtime raised), ``skipped`` (packages missing)."""

    model: str
    imgsz: tuple[int, int]
    case: str
    status: str = ""
    box_diff: float | None = None
    score_diff: float | None = None
    box_mean: float | None = None
    score_mean: float | None = None
    size_mb: float | None = None
    latency_ms: float | None = None
    export_s: float | None = None
    detections: int | None = None
    note: str = ""
    file: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "converted")


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return path.stat().st_size / 2**20


@contextlib.contextmanager
def _no_installs():
    """Nothing is installed while the matrix runs: Ultralytics' requirement checks do not auto-install (a missing
    converter fails its case), and MNN's converter does not import its telemetry logger, which runs
    ``pip install -U aliyun-log-python-sdk`` through whatever ``pip`` is first on PATH (that package pins
    ``protobuf<6`` and so breaks ``onnx``) and then reports to a remote server; ``mnnconvert`` runs without it."""
    from ultralytics.utils import checks

    blocked = "MNN.tools.utils.log"
    had, auto = sys.modules.get(blocked, _MISSING), checks.AUTOINSTALL
    if had is _MISSING:
        sys.modules[blocked] = None  # import raises ImportError; mnnconvert catches it and logs nothing
    checks.AUTOINSTALL = False
    try:
        yield
    finally:
        checks.AUTOINSTALL = auto
        if had is _MISSING and sys.modules.get(blocked, _MISSING) is None:
            del sys.modules[blocked]


_MISSING = object()


@contextlib.contextmanager
def _openvino_at_f32():
    """OpenVINO compiles at f32 meanwhile. On a CPU with native bf16 (seen here: an Intel Xeon VM with AMX and
    AVX512-BF16) its CPU plugin runs an f32 model in bf16 by default, and Ultralytics' OpenVINO backend keeps that
    default on x86 Linux (it asks for f32 on Windows and ARM64 only): the stock YOLOv8n then differs from PyTorch by
    1.5 px on average at 64x96. The matrix checks the exported graph, as on CPUs without bf16."""
    import openvino as ov

    original = ov.Core.compile_model

    def compile_model(self, model, device_name=None, config=None, **kwargs):
        config = {"INFERENCE_PRECISION_HINT": ov.Type.f32, **(config or {})}
        if device_name is None:
            return original(self, model, config=config, **kwargs)
        return original(self, model, device_name, config, **kwargs)

    ov.Core.compile_model = compile_model
    try:
        yield
    finally:
        ov.Core.compile_model = original


@contextlib.contextmanager
def _quiet():
    """Ultralytics' and the converters' INFO logs and prints off (warnings and errors stay)."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        LOGGER.setLevel(level)


def _letterboxed(imgsz: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor]:
    """bus.jpg letterboxed to ``imgsz`` (h, w) as Ultralytics' predictor does: the BGR image and a (1, 3, h, w) float
    RGB tensor in [0, 1]."""
    import cv2
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ASSETS

    im = cv2.imread(str(Path(ASSETS) / "bus.jpg"))
    lb = LetterBox(imgsz, auto=False, stride=32)(image=im)
    x = torch.from_numpy(np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))).float()[None] / 255
    return im, x


def _first(out: Any) -> torch.Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    return torch.as_tensor(np.asarray(out.detach().cpu() if torch.is_tensor(out) else out)).float()


_REFERENCE: dict[tuple, torch.Tensor] = {}


def reference_output(pt: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """The fused PyTorch model's raw output for ``x`` (what every export is compared with; cached per checkpoint
    file and input)."""
    from ultralytics import YOLO

    st = Path(pt).stat()
    key = (str(Path(pt).resolve()), st.st_mtime_ns, st.st_size, tuple(x.shape), float(x.sum()))
    if key not in _REFERENCE:
        _REFERENCE[key] = _reference_output(YOLO, pt, x)
    return _REFERENCE[key]


def _reference_output(YOLO, pt, x: torch.Tensor) -> torch.Tensor:
    with _quiet():
        model = YOLO(str(pt)).model.float().eval()
        model = model.fuse(verbose=False) if "verbose" in model.fuse.__code__.co_varnames else model.fuse()
        with torch.inference_mode():
            return _first(model(x))


def _find(path: Path, pattern: str) -> Path:
    hits = sorted(path.glob(pattern)) if path.is_dir() else []
    if not hits:
        raise FileNotFoundError(f"no {pattern} in {path}")
    return hits[0]


def _coreml_spec(path: Path, imgsz: tuple[int, int]) -> str:
    """Open the Core ML package without running it; check its input is the image of the exported size and its output
    the detection tensor. Returns a short description."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    inp = spec.description.input[0]
    size = (inp.type.imageType.height, inp.type.imageType.width)
    if size != tuple(imgsz):
        raise AssertionError(f"Core ML input is {size}, exported at {tuple(imgsz)}")
    outs = [o.name for o in spec.description.output]
    if not outs:
        raise AssertionError("Core ML model has no outputs")
    return f"spec: image {size[0]}x{size[1]} -> {', '.join(outs)}; mlprogram" if spec.WhichOneof("Type") else "spec"


def run_case(
    pt: str | os.PathLike,
    case: Case,
    imgsz: int | tuple[int, int],
    folder: str | os.PathLike,
    data: str | None = None,
    repeats: int = 5,
    keep: bool = False,
) -> Row:
    """Export ``pt`` as ``case`` at ``imgsz`` into ``folder`` (a copy of the checkpoint is exported there), load it
    back with ``YOLO``, predict bus.jpg, compare raw outputs with the fused PyTorch model and time ``repeats`` runs
    (median). ``data`` is the calibration dataset of int8 cases. The exported files are removed unless ``keep``."""
    import torch._dynamo  # noqa: F401  before a converter loads TensorFlow: triton loaded after it crashed the process
    from ultralytics import YOLO

    from ..integration.export import ExportRefusedError

    pt = Path(pt)
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    row = Row(model=pt.stem, imgsz=hw, case=case.key)
    missing = missing_modules(case)
    if missing:
        row.status, row.note = "skipped", f"needs {', '.join(missing)} (pip install 'yolo-plugins[export]')"
        return row
    work = Path(folder) / f"{pt.stem}-{hw[0]}x{hw[1]}-{case.key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / pt.name
    shutil.copy2(pt, src)
    kwargs = dict(case.kwargs)
    if case.int8:
        kwargs["data"] = data
    cwd = os.getcwd()
    stack = contextlib.ExitStack()
    stack.enter_context(_no_installs())
    if case.format == "openvino":
        stack.enter_context(_openvino_at_f32())
    try:
        os.chdir(work)  # converters write side files into the working directory
        _onnx2tf_calibration_file(case)
        t0 = time.perf_counter()
        try:
            with _quiet():
                exported = Path(YOLO(str(src)).export(format=case.format, imgsz=list(hw), device="cpu", **kwargs))
        except ExportRefusedError as e:
            row.status, row.note = "refused", str(e)
            return row
        except Exception as e:  # noqa: BLE001 - a row of the table
            row.status, row.note = "failed", f"export: {type(e).__name__}: {_one_line(e)}"
            return row
        row.export_s = time.perf_counter() - t0
        row.size_mb = _size_mb(exported)
        row.file = str(exported)
        if not case.runs:
            try:
                row.note = _coreml_spec(exported, hw) if case.format == "coreml" else ""
                row.status = "converted"
            except Exception as e:  # noqa: BLE001
                row.status, row.note = "failed", f"spec: {type(e).__name__}: {_one_line(e)}"
            return row
        target = _find(exported, case.load) if case.load else exported
        if case.load:
            row.size_mb = _size_mb(target)
        try:
            im, x = _letterboxed(hw)
            with _quiet():
                loaded = YOLO(str(target), task="detect")
                res = loaded.predict(im, imgsz=list(hw), device="cpu", verbose=False)
                row.detections = len(res[0].boxes)
                backend = loaded.predictor.model
                out = _first(backend(x))
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    backend(x)
                    times.append(time.perf_counter() - t0)
            row.latency_ms = statistics.median(times) * 1e3
        except Exception as e:  # noqa: BLE001
            row.status, row.note = "failed", f"run: {type(e).__name__}: {_one_line(e)}"
            return row
        ref = reference_output(pt, x)
        if out.shape != ref.shape:
            row.status, row.note = "differs", f"output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}"
            return row
        box, score = (out[:, :4] - ref[:, :4]).abs(), (out[:, 4:] - ref[:, 4:]).abs()
        row.box_diff, row.score_diff = float(box.max()), float(score.max())
        row.box_mean, row.score_mean = float(box.mean()), float(score.mean())
        return judge(row, case)
    finally:
        stack.close()
        os.chdir(cwd)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def judge(row: Row, case: Case) -> Row:
    """Set ``row.status`` to ``ok`` or ``differs`` from its measured differences and ``case``'s tolerance."""
    held = (row.box_diff, row.score_diff) if case.stat == "max" else (row.box_mean, row.score_mean)
    box_tol = max(case.box, case.box_per_side * max(row.imgsz))
    within = held[0] <= box_tol and held[1] <= case.score
    row.status = "ok" if within else "differs"
    row.note = "" if within else f"{case.stat} |difference| tolerance {box_tol:.3g} px / {case.score}"
    return row


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:300]


def _onnx2tf_calibration_file(case: Case) -> None:
    """Ultralytics' SavedModel export downloads onnx2tf's sample calibration file into the working directory unless
    it exists; onnx2tf only reads it for its own int8 default. An equivalent local file (real-photo crops, the same
    20x128x128x3 float32 layout) keeps the export offline."""
    if case.format not in ("saved_model", "pb"):
        return
    f = Path("calibration_image_sample_data_20x128x128x3_float32.npy")
    if not f.exists():
        np.save(f, _images(20, 128).permute(0, 2, 3, 1).numpy().astype(np.float32))


# ---------------------------------------------------------------------------------------------------------- matrix
def run_matrix(
    models: list[str],
    sizes: list[int | tuple[int, int]],
    cases: list[Case] | None = None,
    folder: str | os.PathLike = "export-matrix",
    log=None,
    repeats: int = 5,
) -> list[Row]:
    """Every model x size x case (see :func:`run_case`); int8 cases calibrate on the embedded dataset."""
    from .data import DatasetSpec, make_dataset

    folder = Path(folder)
    cases = list(CASES if cases is None else cases)
    data = None
    if any(c.int8 for c in cases):
        data = str(make_dataset(folder / "data", DatasetSpec(n_train=16, n_val=16, imgsz=320)))
    rows = []
    for name in models:
        pt = prepare_checkpoint(name, folder / "checkpoints")
        for size in sizes:
            for case in cases:
                row = run_case(pt, case, size, folder / "runs", data=data, repeats=repeats)
                row.model = Path(name).stem
                rows.append(row)
                if log:
                    log(_row_line(row))
    return rows


def _row_line(r: Row) -> str:
    return " | ".join(
        str(v)
        for v in (r.model, f"{r.imgsz[0]}x{r.imgsz[1]}", r.case, r.status, _cell(r), _fmt(r.size_mb, 1),
                  _fmt(r.latency_ms, 1), r.note)
    )  # fmt: skip


def _fmt(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _cell(r: Row) -> str:
    if r.box_diff is None:
        return "-"
    cell = f"{r.box_diff:.1e} px / {r.score_diff:.1e}"
    known = {c.key: c for c in CASES}
    if r.case in known and known[r.case].stat == "mean" and r.box_mean is not None:
        cell = f"mean {r.box_mean:.1e} px / {r.score_mean:.1e} (max {cell})"
    return cell


def format_markdown(rows: list[Row], header: str = "") -> str:
    """The matrix as Markdown: one table per image size; per row family x format the status, max |difference| to
    PyTorch (box pixels / score), file size and runtime latency; refusals and failures with their message below."""
    out = [header] if header else []
    sizes = list(dict.fromkeys(r.imgsz for r in rows))
    for hw in sizes:
        sub = [r for r in rows if r.imgsz == hw]
        out += [
            f"\n### {hw[0]}x{hw[1]} (height x width)\n",
            "| model | format | status | max diff (box px / score; fp16/int8: mean) | size MB | latency ms | detections |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sub:
            status = r.status if r.status in ("ok", "converted") else f"**{r.status}**"
            out.append(
                f"| {r.model} | {r.case} | {status} | {_cell(r)} | {_fmt(r.size_mb, 1)} | {_fmt(r.latency_ms, 1)} | "
                f"{'-' if r.detections is None else r.detections} |"
            )
    notes = [r for r in rows if r.note]
    if notes:
        out += ["\nNotes:\n"]
        seen = set()
        for r in notes:
            key = (r.model, r.case, r.note)
            if key in seen:
                continue
            seen.add(key)
            out.append(f"- {r.model} / {r.case} ({r.status}): {r.note}")
    return "\n".join(out) + "\n"


_VERSIONS = ("onnxruntime", "openvino", "ncnn", "pnnx", "MNN", "tensorflow", "onnx2tf", "ai-edge-litert", "litert-torch",
             "coremltools", "executorch")  # fmt: skip


def header(command: str, threads: int | None = None) -> str:
    """The lines above a matrix table: date, machine, threads, software versions, the command that made it."""
    import datetime
    from importlib import metadata

    from .speed import machine_line

    versions = []
    for name in _VERSIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    return (
        f"Export matrix, {datetime.date.today().isoformat()}: {machine_line(threads)}; {', '.join(versions)}.\n"
        f"Command: `{command}`\n\n"
        "max diff: the largest |difference| between the exported model's raw output and the fused PyTorch model's on "
        "the letterboxed bus.jpg (box rows in input pixels / class probabilities); latency: median of the runtime's "
        "forward calls through Ultralytics' AutoBackend (batch 1, fp32 unless the format says otherwise)."
    )


def rows_to_json(rows: list[Row]) -> list[dict]:
    """Plain dicts (for ``--json``)."""
    return [asdict(r) for r in rows]


def rows_from_json(items: list[dict]) -> list[Row]:
    """Rows written by :func:`rows_to_json`, judged again with the current tolerances (rows that ran and were
    compared; refusals, failures and skips stay as they were)."""
    known = {c.key: c for c in CASES}
    rows = []
    for d in items:
        r = Row(**{**d, "imgsz": tuple(d["imgsz"])})
        if r.status in ("ok", "differs") and r.box_diff is not None and r.case in known:
            judge(r, known[r.case])
        rows.append(r)
    return rows
