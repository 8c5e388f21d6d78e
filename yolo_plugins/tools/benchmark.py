"""The main job: train baselines and plugin models under identical settings, then compare mAP, speed and size.

Every model gets the same data, image size, epochs, batch, hyper-parameters and seeds; each is trained once per seed
(``seeds``), so the tables carry the spread that a different seed alone produces. For each model and seed the run
folder holds its Ultralytics training run and a ``metrics.json``; when all are done ``results.csv`` and
``results.md`` (mean, standard deviation and range over the seeds), ``results.png`` (mAP50-95 against fused CPU
latency, with error bars) and ``curves.png`` (validation mAP50-95 and training loss per epoch of every model)
summarise them. A re-run with the same folder skips what already has ``metrics.json``; Ctrl-C keeps what finished.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNameError
from ..integration.names import not_found

__all__ = ["BenchmarkConfig", "DEFAULT_MODELS", "NO_AUGMENTATION", "resolve_model", "run_benchmark", "summarise"]


def resolve_model(name: str) -> str:
    """A model argument Ultralytics can build: an existing file (absolute path), or a stock, shipped or derived name
    (returned as given; Ultralytics resolves it). Raises :class:`ModelNameError` listing what exists."""
    p = Path(name).expanduser()
    if p.is_file():
        return str(p.resolve())
    from ..integration import patch
    from ..integration.compat import tasks

    patch.register()
    try:
        tasks().yaml_model_load(name)
    except FileNotFoundError as e:
        raise ModelNameError(str(e) if isinstance(e, ModelNameError) else not_found(name)) from None
    return name


# the default run: the stock baseline, the convolutional and the attention plugin backbone that learn from scratch in
# a CPU budget of 20 minutes (TransNeXt needs more data or pretrained weights: see docs/benchmark.md)
DEFAULT_MODELS = ("yolov8n.yaml", "yolov8n-repvit.yaml", "yolov8n-transxnet.yaml")
COLUMNS = (
    "model",
    "weights",
    "params_M",
    "GFLOPs",
    "mAP50",
    "mAP50_std",
    "mAP50-95",
    "mAP50-95_std",
    "mAP50-95_min",
    "mAP50-95_max",
    "seeds",
    "cpu_ms",
    "gpu_ms",
    "train_s",
    "epochs",
    "imgsz",
)


# Ultralytics train arguments that switch every augmentation off (mosaic is off in the benchmark already)
NO_AUGMENTATION = {
    "mosaic": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "degrees": 0.0,
    "translate": 0.0,
    "scale": 0.0,
    "fliplr": 0.0,
}


@dataclass
class BenchmarkConfig:
    """Settings shared by every model of a benchmark run (defaults: the default CPU run on the embedded data)."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    data: str | None = None  # an Ultralytics data YAML; None = the embedded dataset
    imgsz: int = 128
    epochs: int = 8
    batch: int = 4
    seeds: int = 2  # each model is trained with seeds seed, seed+1, ...
    seed: int = 0
    weights: str | None = None  # e.g. "imagenet": the plugin backbones start from their published checkpoints
    device: str = ""  # "" = Ultralytics' choice (GPU when present)
    workers: int = 2
    project: str = "runs/yolo-plugins-benchmark"
    name: str = "default"
    n_train: int = 160  # embedded dataset size
    n_val: int = 48
    latency_runs: int = 20
    # Ultralytics train arguments, the same for every model. The defaults suit a short from-scratch CPU schedule
    # (measured with YOLOv8n on the embedded data, 12 epochs at 128 px: an optimizer step per batch of 4 (nbs = batch)
    # learned fastest of the settings tried: mAP50-95 0.06-0.08, against 0.04 with batch 8 and 0.004 with Ultralytics'
    # default nbs=64, which accumulates 8-16 batches per step; AdamW beat SGD). Validation runs every epoch (curves).
    train_args: dict[str, Any] = field(
        default_factory=lambda: {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 1, "mosaic": 0.0}
    )
    extra: dict[str, Any] = field(default_factory=dict)  # user key=value train arguments, applied over train_args

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


def _validate(best: Path, cfg: BenchmarkConfig, data: str) -> dict[str, float]:
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(
        data=data,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        device=cfg.device or None,
        plots=False,
        verbose=False,
        project=str(cfg.run_dir / "_val"),
        name=f"{best.parents[2].name}-{best.parents[1].name}",
        exist_ok=True,
    )
    return {"mAP50": round(float(metrics.box.map50), 4), "mAP50-95": round(float(metrics.box.map), 4)}


_SIZE_KEYS = ("params_M", "GFLOPs", "cpu_ms", "gpu_ms")


def _size_and_speed(best: Path, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Parameters, GFLOPs (Ultralytics' count) and fused latency of one trained model (the same for every seed)."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    net = YOLO(str(best)).model.float()
    params, gflops = get_num_params(net), get_flops(net, cfg.imgsz)
    net.fuse(verbose=False)
    return {
        "params_M": round(params / 1e6, 3),
        "GFLOPs": round(gflops, 2),
        "cpu_ms": round(_latency_ms(net, cfg.imgsz, "cpu", cfg.latency_runs), 1),
        "gpu_ms": round(_latency_ms(net, cfg.imgsz, "cuda", cfg.latency_runs), 2) if torch.cuda.is_available() else "",
    }


def _with_weights(model: str, cfg: BenchmarkConfig) -> tuple[str, str]:
    """(model to train, label): with ``cfg.weights``, a copy of the model YAML whose backbone rows load those
    weights, written to the run folder (a stock model has none and is returned as it is)."""
    label = _label(model)
    if not cfg.weights:
        return model, label
    import yaml

    from ..integration.compat import tasks
    from ..nn.backbone import Backbone
    from ..nn.registry import REGISTRY

    d = tasks().yaml_model_load(resolve_model(model))
    rows = d["backbone"] + d["head"]
    backbones = [r for r in rows if r[2] in REGISTRY and issubclass(REGISTRY[r[2]].cls, Backbone)]
    if not backbones:
        return model, label
    for r in backbones:  # [variant or {scale: variant}, weights, {keyword: value}]
        r[3] = [r[3][0], cfg.weights, *[a for a in r[3][1:] if isinstance(a, dict)]]
    label = f"{label}+{cfg.weights}"
    path = cfg.run_dir / "models" / f"{label}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: v for k, v in d.items() if k not in ("scale", "yaml_file")}, sort_keys=False))
    return str(path), label


def _train(model: str, label: str, seed: int, cfg: BenchmarkConfig, data: str) -> tuple[Path, float]:
    from ultralytics import YOLO

    args = dict(
        data=data,
        epochs=cfg.epochs,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        seed=seed,
        deterministic=True,
        workers=cfg.workers,
        device=cfg.device or None,
        project=str(cfg.run_dir / label),
        name=f"seed{seed}",
        exist_ok=True,
        plots=False,
        verbose=False,
        pretrained=False,
        amp=torch.cuda.is_available(),
        nbs=cfg.batch,  # one optimizer step per batch (Ultralytics' nbs=64 would accumulate 64/batch batches)
    )
    args.update(cfg.train_args)
    args.update(cfg.extra)
    t = time.perf_counter()
    YOLO(resolve_model(model)).train(**args)
    seconds = time.perf_counter() - t
    weights = cfg.run_dir / label / f"seed{seed}" / "weights"
    best = weights / "best.pt" if (weights / "best.pt").is_file() else weights / "last.pt"
    return best, seconds


def machine() -> str:
    """One line naming the hardware the numbers come from."""
    from .speed import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} CPU threads, {gpu}, torch {torch.__version__}"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a model's per-seed results: mean and standard deviation of mAP50 and mAP50-95, the
    mAP50-95 range, mean training time; size and speed from the first seed."""
    row = {
        k: runs[0].get(k, "") for k in ("model", "weights", "params_M", "GFLOPs", "cpu_ms", "gpu_ms", "epochs", "imgsz")
    }
    for key in ("mAP50", "mAP50-95"):
        values = [r[key] for r in runs]
        row[key] = round(statistics.fmean(values), 4)
        row[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    row["mAP50-95_min"] = min(r["mAP50-95"] for r in runs)
    row["mAP50-95_max"] = max(r["mAP50-95"] for r in runs)
    row["seeds"] = len(runs)
    row["train_s"] = round(statistics.fmean(r["train_s"] for r in runs), 1)
    return row


def _runs(cfg: BenchmarkConfig, label: str) -> list[dict[str, Any]]:
    folder = cfg.run_dir / label
    files = sorted(folder.glob("seed*/metrics.json"), key=lambda f: int(f.parent.name[4:]))
    return [json.loads(f.read_text()) for f in files]


def write_tables(cfg: BenchmarkConfig) -> tuple[list[dict], Path]:
    """Collect every finished model's per-seed metrics (in config order) into results.csv / results.md / results.png
    and the learning curves into curves.png."""
    rows, curves = [], {}
    for m in cfg.models:
        labels = [f"{_label(m)}+{cfg.weights}", _label(m)] if cfg.weights else [_label(m)]
        label = next((x for x in labels if (cfg.run_dir / x).is_dir()), labels[-1])
        runs = _runs(cfg, label)
        if runs:
            rows.append(summarise(runs))
            curves[label] = [cfg.run_dir / label / f"seed{r['seed']}" / "results.csv" for r in runs]
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    data = f"embedded dataset ({cfg.n_train} train / {cfg.n_val} val images)" if cfg.data is None else cfg.data
    extra = " ".join(f"{k}={v}" for k, v in cfg.extra.items())
    md = [
        f"Machine: {machine()}. Data: {data}.",
        f"Settings: imgsz={cfg.imgsz}, epochs={cfg.epochs}, batch={cfg.batch}, seeds={cfg.seeds} (from {cfg.seed}), "
        f"backbone weights: {cfg.weights or 'none (from scratch)'}; train arguments: "
        + " ".join(f"{k}={v}" for k, v in {**cfg.train_args, **cfg.extra}.items())
        + (f" (passed: {extra})" if extra else "")
        + f"; latency = median fused fp32 forward, batch 1, over {cfg.latency_runs} runs. mAP: mean +- standard "
        "deviation over the seeds, [min, max] for mAP50-95.",
        "",
        "| model | weights | params (M) | GFLOPs | mAP50 | mAP50-95 | mAP50-95 range | CPU ms | GPU ms | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['model']} | {r['weights'] or '-'} | {r['params_M']} | {r['GFLOPs']} | {r['mAP50']:.3f} +- "
        f"{r['mAP50_std']:.3f} | {r['mAP50-95']:.3f} +- {r['mAP50-95_std']:.3f} | {r['mAP50-95_min']:.3f}-"
        f"{r['mAP50-95_max']:.3f} | {r['cpu_ms']} | {r['gpu_ms'] or '-'} | {r['train_s']} |"
        for r in rows
    ]
    (run / "results.md").write_text("\n".join(md) + "\n")
    if rows:
        _plot(rows, run / "results.png", cfg)
        _plot_curves(curves, run / "curves.png", cfg)
    return rows, run / "results.md"


def _is_baseline(label: str) -> bool:
    return not any(k in label for k in ("repvit", "transnext", "transxnet", "timm", "-ca"))


def _plot(rows: list[dict], path: Path, cfg: BenchmarkConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        base = _is_baseline(r["model"])
        y, lo, hi = r["mAP50-95"], r["mAP50-95_min"], r["mAP50-95_max"]
        ax.errorbar(
            r["cpu_ms"], y, yerr=[[y - lo], [hi - y]], fmt="s" if base else "o", capsize=4,
            color="tab:gray" if base else "tab:blue", markersize=7,
        )  # fmt: skip
        ax.annotate(r["model"], (r["cpu_ms"], y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlim(0, max(r["cpu_ms"] for r in rows) * 1.25)
    ax.set_ylim(0, max(max(r["mAP50-95_max"] for r in rows) * 1.25, 0.01))
    ax.set_xlabel(f"CPU latency, fused, batch 1, {cfg.imgsz}px (ms)")
    ax.set_ylabel(f"mAP50-95 (val), mean and range over {cfg.seeds} seed(s)")
    ax.set_title(f"yolo-plugins benchmark: {cfg.epochs} epochs, imgsz {cfg.imgsz}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _read_curve(path: Path) -> dict[str, list[float]]:
    with open(path) as fh:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(fh)]
    loss = [sum(float(r[f"train/{k}_loss"]) for k in ("box", "cls", "dfl") if f"train/{k}_loss" in r) for r in rows]
    return {"mAP50-95": [float(r.get("metrics/mAP50-95(B)", 0) or 0) for r in rows], "loss": loss}


def _plot_curves(curves: dict[str, list[Path]], path: Path, cfg: BenchmarkConfig) -> None:
    """Validation mAP50-95 and training loss per epoch of every model (mean over seeds, band = range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for label, files in curves.items():
        runs = [_read_curve(f) for f in files if f.is_file()]
        if not runs:
            continue
        for ax, key in zip(axes, ("mAP50-95", "loss")):
            n = min(len(r[key]) for r in runs)
            values = [[r[key][i] for r in runs] for i in range(n)]
            epochs = list(range(1, n + 1))
            line = ax.plot(epochs, [statistics.fmean(v) for v in values], label=label, lw=1.6)[0]
            if len(runs) > 1:
                ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                                color=line.get_color())  # fmt: skip
    axes[0].set_ylabel("validation mAP50-95")
    axes[1].set_ylabel("training loss (box + cls + dfl)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(left=1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learning curves: mean over {cfg.seeds} seed(s), band = range; imgsz {cfg.imgsz}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_benchmark(cfg: BenchmarkConfig, log=print) -> tuple[list[dict], Path]:
    """Train, validate and time every model of ``cfg`` once per seed; returns the table rows and the Markdown file."""
    from .data import DatasetSpec, make_dataset

    for m in cfg.models:
        resolve_model(m)  # fail early on a typo, before hours of training
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    data = cfg.data or str(
        make_dataset(run.parent / "embedded-data", DatasetSpec(cfg.n_train, cfg.n_val, imgsz=max(cfg.imgsz, 64)))
    )
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    prepared = [_with_weights(m, cfg) for m in cfg.models]  # (model to train, label), once per model
    jobs = [(model, label, s) for model, label in prepared for s in seeds]
    try:
        for k, (model, label, seed) in enumerate(jobs, 1):
            out = run / label / f"seed{seed}" / "metrics.json"
            tag = f"[{k}/{len(jobs)}] {label} seed {seed}"
            if out.is_file():
                log(f"{tag}: done in an earlier run, skipped")
                continue
            log(f"{tag}: training {cfg.epochs} epochs at {cfg.imgsz}px ...")
            best, seconds = _train(model, label, seed, cfg, data)
            log(f"{tag}: trained in {seconds:.0f}s; validating{' and timing' if seed == seeds[0] else ''} ...")
            prior = _runs(cfg, label)  # size and speed do not depend on the seed: measured once
            size = {k: prior[0][k] for k in _SIZE_KEYS} if prior else _size_and_speed(best, cfg)
            res = {
                "model": label,
                "weights": cfg.weights or "",
                "seed": seed,
                **size,
                **_validate(best, cfg, data),
                "train_s": round(seconds, 1),
                "epochs": cfg.epochs,
                "imgsz": cfg.imgsz,
            }
            out.write_text(json.dumps(res, indent=1))
            log(f"{tag}: mAP50-95 {res['mAP50-95']}, {res['cpu_ms']} ms CPU")
    except KeyboardInterrupt:
        log("interrupted: writing the tables of the models that finished")
        rows, md = write_tables(cfg)
        log(md.read_text())
        raise
    rows, md = write_tables(cfg)
    log(md.read_text())
    log(f"results: {run / 'results.csv'}, {md}, {run / 'results.png'}, {run / 'curves.png'}")
    return rows, md
