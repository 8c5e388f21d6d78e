"""GPU acceptance run: the paths a GPU user takes, for every family, in one unattended command.

For each family (TransNeXt, TransXNet, RepViT, ContextAggregation; n scale): a short training on generated data
(:mod:`yolo_plugins.tools.data`) with automatic mixed precision (``amp=True``), validation in float32 and with
``half=True``, prediction with ``half=True``, proof that half precision really computes in float16 (matrix products,
convolutions and attention recorded by :class:`~yolo_plugins.tools.precision.GemmDtypes`), ONNX export with
``half=True`` run in ONNX Runtime against the PyTorch model, TensorRT when installed, and a speed table (float32 and
float16 inference, AMP training step) with peak memory. Prints one ``PASS``/``FAIL``/``SKIP`` line per check and a
summary; :func:`main` returns 1 when any check failed.

``--device cpu --dry-run`` runs the same code at tiny sizes on a CPU (what a CPU can run; the CUDA-only checks are
reported as SKIP with the reason), so that the script cannot rot unnoticed (it is a test in the default suite).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["FAMILIES", "Check", "Settings", "format_report", "main", "run_acceptance"]

FAMILIES = ("transnext", "transxnet", "repvit", "ca")
HALF_TOL = 4e-2  # float16 vs float32, relative to each output's scale (whole models: <= 1.1e-2 measured, see docs)


@dataclass
class Settings:
    """Sizes of one run (defaults: a GPU run of a few minutes; :meth:`dry` the CPU dry run)."""

    device: str = "0"
    families: tuple[str, ...] = FAMILIES
    scale: str = "n"
    imgsz: int = 320
    epochs: int = 3
    batch: int = 16
    n_train: int = 64
    n_val: int = 16
    speed_batch: int = 8
    speed_rounds: int = 20
    tensorrt: bool = True
    workdir: str | None = None
    keep: bool = False

    @classmethod
    def dry(cls, **overrides: Any) -> Settings:
        base = {"imgsz": 64, "epochs": 1, "batch": 2, "n_train": 4, "n_val": 2, "speed_batch": 1, "speed_rounds": 2}
        return cls(**{**base, **overrides})


@dataclass
class Check:
    """One line of the report."""

    family: str
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:4}  {self.family:9}  {self.name:18} {self.seconds:6.1f}s  {self.detail}"


@dataclass
class _Family:
    """What the checks of one family share."""

    name: str
    yaml: str
    best: Path | None = None
    speed: dict[str, Any] = field(default_factory=dict)


class _Skip(Exception):
    """A check that cannot run here (the message says why)."""


def _cuda(device: str) -> bool:
    return device not in ("cpu", "mps") and torch.cuda.is_available()


def _finite(values) -> bool:
    values = list(values.values()) if isinstance(values, dict) else values
    return bool(torch.isfinite(torch.as_tensor(values, dtype=torch.float64)).all())


# ------------------------------------------------------------------------------------------------------------- checks


def _train(fam: _Family, cfg: Settings, data: Path, run_dir: Path) -> str:
    from ultralytics import YOLO

    model = YOLO(fam.yaml)
    model.train(
        data=str(data), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=cfg.device, workers=0, amp=True,
        plots=False, project=str(run_dir), name=fam.name, exist_ok=True, verbose=False, seed=0,
    )  # fmt: skip
    trainer = model.trainer
    fam.best = Path(trainer.best)
    loss = trainer.tloss
    if not _finite(loss if isinstance(loss, dict) else loss.flatten().tolist()):
        raise AssertionError(f"non-finite training loss {loss}")
    if _cuda(cfg.device):
        if not trainer.amp:
            raise AssertionError("the trainer did not enable AMP (check_amp failed?)")
        return f"AMP on, loss scale {trainer.scaler.get_scale():g}, losses {_fmt_values(loss)}"
    return f"float32 (Ultralytics disables AMP on a CPU), losses {_fmt_values(loss)}"


def _fmt_values(values) -> str:
    if isinstance(values, dict):
        return ", ".join(f"{k.split('/')[-1]} {float(v):.3g}" for k, v in values.items())
    return ", ".join(f"{float(v):.3g}" for v in torch.as_tensor(values).flatten())


def _amp_dtypes(fam: _Family, cfg: Settings) -> str:
    """A training forward and backward under autocast, as the trainer runs it: the bulk in float16."""
    from ..tools.precision import GemmDtypes

    if not _cuda(cfg.device):
        raise _Skip("needs CUDA: Ultralytics' autocast is CUDA-only (tests/test_half_paths.py emulates it on the CPU)")
    from ultralytics import YOLO

    model = YOLO(str(fam.best)).model.float().to(_torch_device(cfg.device)).train()
    x = torch.rand(2, 3, cfg.imgsz, cfg.imgsz, device=_torch_device(cfg.device))
    with GemmDtypes() as rec:
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
        sum(t.float().mean() for t in _tensors(out)).backward()
    share = rec.share(torch.float16)
    if share < 0.99:
        raise AssertionError(f"only {share:.1%} of the multiply-adds in float16 under autocast: {rec.summary()}")
    return f"{share:.2%} of the training multiply-adds in float16{_kernels(rec)}"


def _kernels(rec) -> str:
    """The fused-attention kernels PyTorch chose (flash, memory-efficient, cuDNN, or none: the math fallback)."""
    names = sorted({c.op.removeprefix("_scaled_dot_product_") for c in rec.calls if "attention" in c.op})
    return f"; attention kernels: {', '.join(names)}" if names else ""


def _tensors(out) -> list[torch.Tensor]:
    from ..tools.precision import tensors

    return tensors(out)


def _torch_device(device: str) -> torch.device:
    return torch.device("cpu" if device == "cpu" else f"cuda:{device}" if device.isdigit() else device)


def _val(fam: _Family, cfg: Settings, data: Path, half: bool) -> str:
    from ultralytics import YOLO

    if half and not _cuda(cfg.device):
        raise _Skip("needs CUDA: Ultralytics 8.4 validates PyTorch models in float32 on a CPU")
    model = YOLO(str(fam.best))
    metrics = model.val(
        data=str(data), imgsz=cfg.imgsz, batch=cfg.batch, device=cfg.device, half=half, plots=False, verbose=False
    )
    values = metrics.results_dict
    if not _finite(values):
        raise AssertionError(f"non-finite metrics {values}")
    fam.speed[f"map50_{'half' if half else 'fp32'}"] = values.get("metrics/mAP50(B)")
    if half and fam.speed.get("map50_fp32") is not None:
        diff = abs(values.get("metrics/mAP50(B)", 0) - fam.speed["map50_fp32"])
        if diff > 0.05:
            raise AssertionError(f"mAP50 in half precision differs from float32 by {diff:.3f}")
    return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in values.items() if "mAP" in k)


def _predict_half(fam: _Family, cfg: Settings) -> str:
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    if not _cuda(cfg.device):
        raise _Skip("needs CUDA: Ultralytics 8.4 predicts with PyTorch models in float32 on a CPU")
    model = YOLO(str(fam.best))
    res = model.predict(str(Path(ASSETS) / "bus.jpg"), half=True, imgsz=cfg.imgsz, device=cfg.device, verbose=False)
    dtypes = {p.dtype for p in model.predictor.model.parameters()}
    if dtypes != {torch.float16} or not torch.isfinite(res[0].boxes.data).all():
        raise AssertionError(f"parameters {dtypes}, boxes finite: {bool(torch.isfinite(res[0].boxes.data).all())}")
    return f"{len(res[0].boxes)} boxes, model in float16"


def _half_compute(fam: _Family, cfg: Settings) -> str:
    """``model.half()`` (what half=True does): every layer's output in float16, the products in float16, close to
    float32 layer by layer."""
    from ultralytics import YOLO

    from ..tools.precision import GemmDtypes, layer_outputs, relative_errors, within

    device = _torch_device(cfg.device)
    model = YOLO(str(fam.best)).model.float().fuse(verbose=False).eval().to(device)
    x = torch.rand(1, 3, cfg.imgsz, cfg.imgsz, generator=torch.Generator().manual_seed(0)).to(device)
    ref = layer_outputs(model, x)
    half = copy.deepcopy(model).half()
    rec = GemmDtypes()
    out = layer_outputs(half, x.half(), lambda: within(rec, torch.no_grad()))
    if {t.dtype for t in out} != {torch.float16}:
        raise AssertionError(f"a half model gives { ({t.dtype for t in out}) }")
    if rec.share(torch.float16) < 1.0:
        raise AssertionError(f"products not in float16: {rec.summary()} (largest {rec.largest(torch.float32)})")
    err = max(relative_errors(out, ref))
    if not err <= HALF_TOL:
        raise AssertionError(f"float16 differs from float32 by {err:.1e} of a layer's scale (> {HALF_TOL:g})")
    return f"all products in float16, worst layer {err:.1e} of its scale{_kernels(rec)}"


def _onnx_half(fam: _Family, cfg: Settings, work: Path) -> str:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise _Skip("onnxruntime is not installed (pip install onnxruntime-gpu)") from e
    from ultralytics import YOLO

    model = YOLO(str(fam.best))
    f = Path(model.export(format="onnx", half=True, imgsz=cfg.imgsz, device=cfg.device, verbose=False))
    f = Path(shutil.move(str(f), work / f"{fam.name}-half.onnx"))
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(str(f), providers=providers)
    inp = sess.get_inputs()[0]
    x = torch.rand(1, 3, cfg.imgsz, cfg.imgsz, generator=torch.Generator().manual_seed(0))
    dtype = torch.float16 if "float16" in inp.type else torch.float32
    out = torch.from_numpy(sess.run(None, {inp.name: x.to(dtype).numpy()})[0]).float()
    ref_model = YOLO(str(fam.best)).model.float().fuse(verbose=False).eval()
    with torch.no_grad():
        ref = ref_model(x)[0].float()
    errs = _detect_errors(out, ref)
    if max(errs.values()) > HALF_TOL:
        raise AssertionError(f"ONNX half vs PyTorch float32: {errs}")
    where = "traced in float16" if _cuda(cfg.device) else "float32 graph converted to float16 (CPU export)"
    return f"{where}, {sess.get_providers()[0]}, boxes {errs['boxes']:.1e} / scores {errs['scores']:.1e} of scale"


def _detect_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Relative errors of a detection output (B, 4 + nc, anchors): boxes and scores each against their own scale."""
    return {
        name: ((out[:, rows] - ref[:, rows]).abs().max() / ref[:, rows].abs().max()).item()
        for rows, name in ((slice(0, 4), "boxes"), (slice(4, None), "scores"))
    }


def _tensorrt(fam: _Family, cfg: Settings, work: Path) -> str:
    if not cfg.tensorrt:
        raise _Skip("--no-tensorrt")
    if not _cuda(cfg.device):
        raise _Skip("needs CUDA: TensorRT builds engines for NVIDIA GPUs")
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise _Skip("TensorRT is not installed (pip install tensorrt)") from e
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    model = YOLO(str(fam.best))
    f = model.export(format="engine", half=True, imgsz=cfg.imgsz, device=cfg.device, verbose=False)
    res = YOLO(f).predict(str(Path(ASSETS) / "bus.jpg"), imgsz=cfg.imgsz, device=cfg.device, verbose=False)
    if not torch.isfinite(res[0].boxes.data).all():
        raise AssertionError("non-finite boxes from the TensorRT engine")
    shutil.move(str(f), work / f"{fam.name}-half.engine")
    return f"engine built, {len(res[0].boxes)} boxes"


# -------------------------------------------------------------------------------------------------------------- speed


def _timed(step: Callable[[], Any], cuda: bool, rounds: int) -> float:
    step()  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mb(cuda: bool, run: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``run`` and return (its result, peak memory in MiB during it: the CUDA allocator's peak, or the growth of
    the process's resident high-water mark on Linux CPUs)."""
    from .speed import _reset_peak_rss, _rss_mb

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out = run()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() / 2**20
    base = _rss_mb() if _reset_peak_rss() else None
    out = run()
    hwm = _rss_mb("VmHWM")
    return out, None if base is None or hwm is None else max(hwm - base, 0.0)


def _speed(name: str, yaml_or_ckpt: str, cfg: Settings) -> dict[str, Any]:
    """Median latency and peak memory of float32 and float16 inference (fused, eval) and of an AMP training step."""
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg

    from .speed import _detect_batch

    cuda = _cuda(cfg.device)
    device = _torch_device(cfg.device)
    row: dict[str, Any] = {"model": name}
    x = torch.rand(cfg.speed_batch, 3, cfg.imgsz, cfg.imgsz, device=device)
    fused = YOLO(yaml_or_ckpt).model.float().fuse(verbose=False).eval().to(device)
    for dtype, key in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        m = fused if dtype == torch.float32 else copy.deepcopy(fused).half()
        xi = x.to(dtype)

        def infer(m=m, xi=xi):
            with torch.inference_mode():
                return m(xi)

        row[f"{key}_ms"], row[f"{key}_mb"] = _peak_mb(cuda, lambda infer=infer: _timed(infer, cuda, cfg.speed_rounds))
    model = YOLO(yaml_or_ckpt).model.float().to(device).train()
    for p in model.parameters():  # a loaded checkpoint comes frozen
        p.requires_grad_(True)
    model.args = get_cfg()
    batch = {k: v.to(device) for k, v in _detect_batch(model, cfg.speed_batch, cfg.imgsz).items()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16, enabled=cuda):
            loss = model.loss(batch)[0].sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    row["amp_train_ms"], row["amp_train_mb"] = _peak_mb(cuda, lambda: _timed(step, cuda, max(2, cfg.speed_rounds // 4)))
    return row


def format_report(
    checks: list[Check], speed: list[dict[str, Any]], cfg: Settings, seconds: float, lines: bool = True
) -> str:
    """The PASS/FAIL/SKIP lines (unless ``lines`` is False), the speed table (Markdown) and the summary line."""
    from .speed import machine_line

    body = [c.line() for c in checks] if lines else []
    amp = "AMP" if _cuda(cfg.device) else "float32 (CPU)"
    head = (
        f"\n{machine_line()}; device {cfg.device}; {cfg.imgsz} px, batch {cfg.speed_batch}; median of "
        f"{cfg.speed_rounds} runs; train step: {amp}, SGD; peak MiB: "
        + ("CUDA allocator peak" if _cuda(cfg.device) else "growth of the resident high-water mark")
        + "\n\n| model | fp32 ms | fp16 ms | train step ms | fp32 peak MiB | fp16 peak MiB | train peak MiB |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = [
        f"| {r['model']} | {_num(r.get('fp32_ms'))} | {_num(r.get('fp16_ms'))} | {_num(r.get('amp_train_ms'))} | "
        f"{_num(r.get('fp32_mb'))} | {_num(r.get('fp16_mb'))} | {_num(r.get('amp_train_mb'))} |"
        for r in speed
    ]
    n = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    summary = f"\n{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped in {seconds / 60:.1f} min"
    return "\n".join(body) + (head + "\n".join(rows) if speed else "") + summary


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


# ---------------------------------------------------------------------------------------------------------------- run


def run_acceptance(cfg: Settings, log: Callable[[str], None] = print) -> tuple[list[Check], list[dict[str, Any]]]:
    """Run every check for every family of ``cfg``; ``log`` receives each PASS/FAIL/SKIP line as it is decided."""
    import yolo_plugins  # noqa: F401  (registers the plugin modules with Ultralytics)

    from .data import DatasetSpec, make_dataset

    unknown = sorted(set(cfg.families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if not _cuda(cfg.device) and cfg.device != "cpu":
        raise ValueError(f"device {cfg.device!r} needs CUDA, which this machine does not have; use --device cpu")
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="yolo-plugins-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_dataset(work / "data", DatasetSpec(n_train=cfg.n_train, n_val=cfg.n_val, imgsz=cfg.imgsz))
    checks: list[Check] = []
    speed: list[dict[str, Any]] = []

    def check(fam: _Family, name: str, fn: Callable[[], str], needs_model: bool = True) -> None:
        t0 = time.perf_counter()
        if needs_model and fam.best is None:
            c = Check(fam.name, name, "SKIP", "no trained model (training failed)")
        else:
            try:
                c = Check(fam.name, name, "PASS", fn())
            except _Skip as e:
                c = Check(fam.name, name, "SKIP", str(e))
            except Exception as e:  # noqa: BLE001  (a failed check is reported; the others still run)
                where = traceback.extract_tb(e.__traceback__)[-1]
                msg = str(e).splitlines()[0][:300] if str(e) else ""
                c = Check(
                    fam.name, name, "FAIL", f"{type(e).__name__}: {msg} ({Path(where.filename).name}:{where.lineno})"
                )
        c.seconds = time.perf_counter() - t0
        checks.append(c)
        log(c.line())

    cwd = os.getcwd()
    os.chdir(work)  # Ultralytics writes exports and runs next to the model/cwd
    try:
        for name in cfg.families:
            fam = _Family(name, f"yolov8{cfg.scale}-{name}.yaml")
            check(fam, "train-amp", lambda fam=fam: _train(fam, cfg, data, work / "runs"), needs_model=False)
            check(fam, "amp-float16-compute", lambda fam=fam: _amp_dtypes(fam, cfg))
            check(fam, "val-fp32", lambda fam=fam: _val(fam, cfg, data, half=False))
            check(fam, "val-half", lambda fam=fam: _val(fam, cfg, data, half=True))
            check(fam, "predict-half", lambda fam=fam: _predict_half(fam, cfg))
            check(fam, "half-compute", lambda fam=fam: _half_compute(fam, cfg))
            check(fam, "onnx-half", lambda fam=fam: _onnx_half(fam, cfg, work))
            check(fam, "tensorrt-half", lambda fam=fam: _tensorrt(fam, cfg, work))

            def measure(fam=fam):
                fam.speed.update(_speed(f"yolov8{cfg.scale}-{fam.name}", str(fam.best), cfg))
                speed.append(fam.speed)
                return f"fp32 {fam.speed['fp32_ms']:.1f} ms, fp16 {fam.speed['fp16_ms']:.1f} ms"

            check(fam, "speed", measure)
        stock = _Family("stock", f"yolov8{cfg.scale}.yaml")

        def measure_stock():
            speed.append(_speed(stock.yaml.removesuffix(".yaml") + " (stock)", stock.yaml, cfg))
            return "baseline row of the speed table"

        check(stock, "speed", measure_stock, needs_model=False)
    finally:
        os.chdir(cwd)
        if not cfg.keep and cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return checks, speed


def main(argv: list[str] | None = None) -> int:
    """Command line of ``scripts/gpu_acceptance.py``; returns the exit code (1 if any check failed)."""
    p = argparse.ArgumentParser(
        prog="gpu_acceptance.py", description="GPU acceptance run of every yolo-plugins family (see docs/precision.md)"
    )
    p.add_argument("--device", default="0", help="CUDA device index (default 0), or cpu")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes (a CPU run of the same code, minutes)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--scale", default="n", choices=list("nsmlx"))
    p.add_argument("--imgsz", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT export even when it is installed")
    p.add_argument("--workdir", default=None, help="keep data, runs and exports here (default: a temporary folder)")
    p.add_argument("--out", default=None, help="also write the report (Markdown) to this file")
    ns = p.parse_args(argv)
    overrides = {"device": ns.device, "families": tuple(ns.families), "scale": ns.scale, "tensorrt": not ns.no_tensorrt}
    overrides.update({k: v for k, v in (("imgsz", ns.imgsz), ("epochs", ns.epochs)) if v is not None})
    overrides["workdir"], overrides["keep"] = ns.workdir, ns.workdir is not None
    cfg = Settings.dry(**overrides) if ns.dry_run else Settings(**overrides)
    t0 = time.perf_counter()
    try:
        checks, speed = run_acceptance(cfg)
    except ValueError as e:
        p.error(str(e))
    seconds = time.perf_counter() - t0
    print(format_report(checks, speed, cfg, seconds, lines=False))  # the lines were printed as they came
    if ns.out:
        Path(ns.out).write_text(format_report(checks, speed, cfg, seconds) + "\n")
    return 1 if any(c.status == "FAIL" for c in checks) else 0
