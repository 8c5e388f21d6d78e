"""Exported-graph latency of a TransNeXt YOLO against the stock model, ONNX Runtime and OpenVINO, interleaved.

Both models are exported with Ultralytics' own exporter (``YOLO(yaml).export(format=..., imgsz=...)``, as
``yolo export`` does; random weights: latency does not depend on them), loaded once, then timed in rounds where every
(model, runtime) pair runs one inference in turn, so all of them see the same machine load. Prints a Markdown table
(median latency, ratio to the stock model in the same runtime, file size) with date, machine, threads and load.

    python scripts/speed_transnext_export.py --scale s --imgsz 640 --threads 2 --rounds 20
    python scripts/speed_transnext_export.py --profile      # + per-operator times (ORT profiling, OpenVINO counters)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np


def export(yaml: str, fmt: str, imgsz: int, folder: Path) -> Path:
    """Export ``yaml`` (built with random weights) to ``fmt`` in ``folder`` with Ultralytics' exporter."""
    from ultralytics import YOLO

    import yolo_plugins  # noqa: F401  (plugin modules in the YAML)

    cwd = os.getcwd()
    os.chdir(folder)  # the exporter writes next to the (relative) YAML name
    try:
        return Path(YOLO(yaml).export(format=fmt, imgsz=imgsz, verbose=False)).resolve()
    finally:
        os.chdir(cwd)


def _size_mb(path: Path) -> float:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def load(path: Path, fmt: str, threads: int, profile: str | None = None):
    """A callable running one inference on a (1, 3, H, W) float32 array."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        if profile:
            opts.enable_profiling, opts.profile_file_prefix = True, profile
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda x: sess.run(None, {name: x})  # noqa: E731
        run.session = sess
        return run
    import openvino as ov

    core = ov.Core()
    xml = next(path.glob("*.xml"))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if profile:
        config["PERF_COUNT"] = True
    compiled = core.compile_model(core.read_model(xml), "CPU", config)
    request = compiled.create_infer_request()
    run = lambda x: request.infer([x])  # noqa: E731
    run.request = request
    return run


def ort_profile(run, x: np.ndarray, steps: int = 3) -> list[tuple[str, float]]:
    """Milliseconds per ONNX operator type per inference (ORT's profiler)."""
    for _ in range(steps):
        run(x)
    events = json.loads(Path(run.session.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / steps
    return per_op.most_common()


def ov_profile(run, x: np.ndarray, steps: int = 3) -> list[tuple[str, float]]:
    """Milliseconds per executed OpenVINO layer type per inference (performance counters of the last run)."""
    for _ in range(steps):
        run(x)
    per_op = collections.Counter()
    for info in run.request.get_profiling_info():
        per_op[info.exec_type or info.node_type] += info.real_time.total_seconds() * 1000
    return per_op.most_common()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="s")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runtimes", default="onnx,openvino")
    p.add_argument("--models", default="yolov8{s}.yaml,yolov8{s}-transnext.yaml")
    p.add_argument("--folder", default=None, help="where the exported files go (default: a temporary folder)")
    p.add_argument("--profile", action="store_true", help="also print per-operator times (top 15 per model)")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    folder = Path(a.folder or tempfile.mkdtemp(prefix="speed-transnext-"))
    folder.mkdir(parents=True, exist_ok=True)
    models = [m.format(s=a.scale) for m in a.models.split(",")]
    x = np.random.default_rng(0).random((1, 3, a.imgsz, a.imgsz), dtype=np.float32)
    runs, sizes, times = {}, {}, collections.defaultdict(list)
    for fmt in a.runtimes.split(","):
        for m in models:
            t = time.time()
            path = export(m, fmt, a.imgsz, folder)
            sizes[m, fmt] = _size_mb(path)
            prof = str(folder / f"{Path(m).stem}_{fmt}") if a.profile else None
            runs[m, fmt] = load(path, fmt, a.threads, prof)
            print(f"exported {m} to {fmt} in {time.time() - t:.0f} s: {sizes[m, fmt]:.1f} MB", flush=True)
    for _ in range(a.warmup):
        for run in runs.values():
            run(x)
    load_before = os.getloadavg()
    for _ in range(a.rounds):
        for key, run in runs.items():
            t = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - t) * 1000)
    load_after = os.getloadavg()

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"\n{datetime.now():%Y-%m-%d %H:%M}, {cpu}, {os.cpu_count()} CPUs, {a.threads} threads, batch 1, "
          f"{a.imgsz}x{a.imgsz}, float32, {a.rounds} interleaved rounds; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("| model | runtime | median ms | min ms | ratio to stock | file MB |\n|---|---|---|---|---|---|")
    for (m, fmt), ts in times.items():
        stock = statistics.median(times[models[0], fmt])
        med = statistics.median(ts)
        print(f"| {Path(m).stem} | {fmt} | {med:.0f} | {min(ts):.0f} | {med / stock:.2f} | {sizes[m, fmt]:.1f} |")
    if a.profile:
        for (m, fmt), run in runs.items():
            ops = (ort_profile if fmt == "onnx" else ov_profile)(run, x)
            total = sum(ms for _, ms in ops)
            print(f"\n{Path(m).stem} {fmt}: {total:.0f} ms in operators; " +
                  ", ".join(f"{op} {ms:.1f}" for op, ms in ops[:15]))


if __name__ == "__main__":
    main()
