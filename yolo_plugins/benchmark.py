"""The main job: train baselines and plugin models under identical settings, then compare mAP, speed and size.

Every model gets the same data, image size, epochs, batch, seed and hyper-parameters. For each one the run folder
holds its Ultralytics training run and a ``metrics.json``; when all are done ``results.csv``, ``results.md`` and
``results.png`` (mAP50-95 against fused CPU latency) summarise them. A re-run with the same folder skips models that
already have ``metrics.json``; Ctrl-C keeps what finished.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .names import resolve_model

__all__ = ["BenchmarkConfig", "DEFAULT_BASELINES", "DEFAULT_PLUGINS", "resolve_model", "run_benchmark"]

DEFAULT_BASELINES = ("yolov8n.yaml", "yolo11n.yaml")
DEFAULT_PLUGINS = ("yolov8n-ca.yaml", "yolov8n-repvit.yaml", "yolov8n-transxnet.yaml", "yolov8n-transnext.yaml")
COLUMNS = ("model", "params_M", "GFLOPs", "mAP50", "mAP50-95", "cpu_ms", "gpu_ms", "train_s", "epochs", "imgsz")


@dataclass
class BenchmarkConfig:
    """Settings shared by every model of a benchmark run (defaults: the ~15-minute CPU run on embedded data)."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES + DEFAULT_PLUGINS))
    data: str | None = None  # an Ultralytics data YAML; None = the embedded dataset
    imgsz: int = 128
    epochs: int = 12
    batch: int = 4
    seed: int = 0
    device: str = ""  # "" = Ultralytics' choice (GPU when present)
    workers: int = 2
    project: str = "runs/yolo-plugins-benchmark"
    name: str = "default"
    n_train: int = 160  # embedded dataset size
    n_val: int = 48
    latency_runs: int = 20
    # extra Ultralytics train arguments, the same for every model. The defaults suit a short from-scratch CPU schedule
    # (measured with YOLOv8n on the embedded data, 12 epochs at 128 px: an optimizer step per batch of 4 (nbs = batch)
    # learned fastest of the settings tried: mAP50-95 0.06-0.08, against 0.04 with batch 8 and 0.004 with Ultralytics'
    # default nbs=64, which accumulates 8-16 batches per step; AdamW beat SGD; validation only after the last epoch)
    train_args: dict[str, Any] = field(
        default_factory=lambda: {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 1, "mosaic": 0.0, "val": False}
    )

    @property
    def run_dir(self) -> Path:
        return Path(self.project).expanduser().resolve() / self.name


def _label(name: str) -> str:
    return Path(name).name.removesuffix(".yaml").removesuffix(".pt")


def _latency_ms(model: torch.nn.Module, imgsz: int, device: str, runs: int) -> float:
    """Median forward latency (batch 1, eval, fused, fp32) over ``runs`` after 3 warm-ups."""
    x = torch.rand(1, 3, imgsz, imgsz, device=device)
    model = model.to(device).eval()
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _measure(best: Path, cfg: BenchmarkConfig, data: str) -> dict[str, Any]:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    yolo = YOLO(str(best))
    metrics = yolo.val(
        data=data,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        device=cfg.device or None,
        plots=False,
        verbose=False,
        project=str(cfg.run_dir / "_val"),
        name=best.parents[1].name,
        exist_ok=True,
    )
    net = yolo.model.float()
    params = get_num_params(net)
    gflops = get_flops(net, cfg.imgsz)
    net.fuse(verbose=False)
    out = {
        "params_M": round(params / 1e6, 3),
        "GFLOPs": round(gflops, 2),
        "mAP50": round(float(metrics.box.map50), 4),
        "mAP50-95": round(float(metrics.box.map), 4),
        "cpu_ms": round(_latency_ms(net, cfg.imgsz, "cpu", cfg.latency_runs), 1),
        "gpu_ms": round(_latency_ms(net, cfg.imgsz, "cuda", cfg.latency_runs), 2) if torch.cuda.is_available() else "",
    }
    return out


def _train(model: str, cfg: BenchmarkConfig, data: str) -> tuple[Path, float]:
    from ultralytics import YOLO

    label = _label(model)
    args = dict(
        data=data,
        epochs=cfg.epochs,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        seed=cfg.seed,
        deterministic=True,
        workers=cfg.workers,
        device=cfg.device or None,
        project=str(cfg.run_dir),
        name=label,
        exist_ok=True,
        plots=False,
        verbose=False,
        pretrained=False,
        amp=torch.cuda.is_available(),
        nbs=cfg.batch,  # one optimizer step per batch (Ultralytics' nbs=64 would accumulate 64/batch batches)
    )
    args.update(cfg.train_args)
    t = time.perf_counter()
    YOLO(resolve_model(model)).train(**args)
    seconds = time.perf_counter() - t
    best = cfg.run_dir / label / "weights" / "best.pt"
    if not best.is_file():
        best = cfg.run_dir / label / "weights" / "last.pt"
    return best, seconds


def machine() -> str:
    """One line naming the hardware the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPU threads, {gpu}, torch {torch.__version__}"


def write_tables(cfg: BenchmarkConfig) -> tuple[list[dict], Path]:
    """Collect every finished model's metrics.json (in config order) into results.csv / results.md / results.png."""
    rows = []
    for m in cfg.models:
        f = cfg.run_dir / _label(m) / "metrics.json"
        if f.is_file():
            rows.append(json.loads(f.read_text()))
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = [
        f"Machine: {machine()}. Data: {cfg.data or 'embedded dataset'} ({cfg.n_train} train / {cfg.n_val} val images)"
        if cfg.data is None
        else f"Machine: {machine()}. Data: {cfg.data}",
        f"Settings: imgsz={cfg.imgsz}, epochs={cfg.epochs}, batch={cfg.batch}, seed={cfg.seed}; latency = median "
        f"fused fp32 forward, batch 1, over {cfg.latency_runs} runs.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    (run / "results.md").write_text("\n".join(md) + "\n")
    if rows:
        _plot(rows, run / "results.png", cfg)
    return rows, run / "results.md"


def _plot(rows: list[dict], path: Path, cfg: BenchmarkConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        base = not any(k in r["model"] for k in ("repvit", "transnext", "transxnet", "-ca"))
        ax.scatter(r["cpu_ms"], r["mAP50-95"], s=60, marker="s" if base else "o", c="tab:gray" if base else "tab:blue")
        ax.annotate(r["model"], (r["cpu_ms"], r["mAP50-95"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"CPU latency, fused, batch 1, {cfg.imgsz}px (ms)")
    ax.set_ylabel("mAP50-95 (val)")
    ax.set_title(f"yolo-plugins benchmark: {cfg.epochs} epochs, imgsz {cfg.imgsz}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_benchmark(cfg: BenchmarkConfig, log=print) -> tuple[list[dict], Path]:
    """Train, validate and time every model of ``cfg``; returns the table rows and the Markdown file."""
    from .data import DatasetSpec, make_dataset

    for m in cfg.models:
        resolve_model(m)  # fail early on a typo, before hours of training
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    data = cfg.data or str(
        make_dataset(run.parent / "embedded-data", DatasetSpec(cfg.n_train, cfg.n_val, imgsz=max(cfg.imgsz, 64)))
    )
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    try:
        for k, m in enumerate(cfg.models, 1):
            label = _label(m)
            out = run / label / "metrics.json"
            if out.is_file():
                log(f"[{k}/{len(cfg.models)}] {label}: done in an earlier run, skipped")
                continue
            log(f"[{k}/{len(cfg.models)}] {label}: training {cfg.epochs} epochs at {cfg.imgsz}px ...")
            best, seconds = _train(m, cfg, data)
            log(f"[{k}/{len(cfg.models)}] {label}: trained in {seconds:.0f}s; validating and timing ...")
            res = {
                "model": label,
                **_measure(best, cfg, data),
                "train_s": round(seconds, 1),
                "epochs": cfg.epochs,
                "imgsz": cfg.imgsz,
            }
            out.write_text(json.dumps(res, indent=1))
            log(f"[{k}/{len(cfg.models)}] {label}: mAP50-95 {res['mAP50-95']}, {res['cpu_ms']} ms CPU")
    except KeyboardInterrupt:
        log("interrupted: writing the tables of the models that finished")
        rows, md = write_tables(cfg)
        log(md.read_text())
        raise
    rows, md = write_tables(cfg)
    log(md.read_text())
    log(f"results: {run / 'results.csv'}, {md}, {run / 'results.png'}")
    return rows, md
