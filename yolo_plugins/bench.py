"""Latency and peak-memory benchmark of plugin backbones (used by ``scripts/bench_backbones.py``).

Every configuration (backbone name, image size, batch, mode) runs in its own fresh Python process, so its peak memory
is that process's ``ru_maxrss`` (resident set, includes Python + torch + weights) and nothing leaks between
configurations; the process also reports the resident set right before the first timed step, whose difference to the
peak approximates the activation/workspace memory of the step. Modes:

* ``infer``: ``model.eval()`` under ``torch.no_grad()``, one forward per step;
* ``train``: ``model.train()``, forward + backward of the mean of all features + an SGD step.

Latency is the median over ``repeats`` timed steps after ``warmup`` untimed ones. With ``oracle=True`` the family's
naive implementation (``tests/oracles/<family>_naive.py``, repository checkouts only) runs after the optimised
one in the same process (eval, sizes up to ``ORACLE_MAX_SIZE``), reporting both latencies and the max
|difference|.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_MODELS", "BenchResult", "format_markdown", "run_config", "run_suite"]

DEFAULT_MODELS = ("transnext_micro", "transxnet_t", "repvit_m0_9")
ORACLE_MAX_SIZE = 320  # naive oracles materialise per-pair tables (TransNeXt: ~20 GB at 640), so only small sizes
_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchResult:
    """One configuration's measurements (latency in ms, memory in MiB); ``note`` explains a skip or failure."""

    name: str
    imgsz: int
    batch: int
    mode: str
    latency_ms: float | None = None
    latency_min_ms: float | None = None
    cpu_ms: float | None = None
    peak_rss_mb: float | None = None
    step_rss_mb: float | None = None
    oracle_ms: float | None = None
    oracle_diff: float | None = None
    threads: int | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)


def _family_module(name: str) -> str:
    return name.split("_")[0]


def _import_family(name: str) -> str | None:
    """Import ``yolo_plugins.<family>``; return a note if it is not available."""
    try:
        importlib.import_module(f"yolo_plugins.{_family_module(name)}")
    except ImportError as e:
        return f"skipped: family '{_family_module(name)}' not importable ({e})"
    return None


def _oracle(name: str):
    """The naive forward ``f(model, x) -> list[Tensor]`` of the family, or None (needs the repository's tests/)."""
    fam = _family_module(name)
    path = _ROOT / "tests" / "oracles" / f"{fam}_naive.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_oracle_{fam}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if hasattr(mod, "backbone"):  # transnext
        return mod.backbone
    if hasattr(mod, "naive_forward"):  # transxnet: (state_dict, config, x)
        return lambda model, x: mod.naive_forward(model.state_dict(), model.config(model.variant), x)
    return None


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _measure(
    name: str, imgsz: int, batch: int, mode: str, warmup: int, repeats: int, oracle: bool, threads: int | None
) -> BenchResult:
    """Run one configuration in this process (called inside the worker subprocess)."""
    import torch

    from .backbone import create_backbone

    res = BenchResult(name, imgsz, batch, mode)
    note = _import_family(name)
    if note:
        res.note = note
        return res
    if threads:
        torch.set_num_threads(threads)
    res.threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = create_backbone(name)
    x = torch.randn(batch, 3, imgsz, imgsz)
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad():
                return model(x)
    elif mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            out = model(x)
            sum(f.float().mean() for f in out).backward()
            opt.step()
            return out
    else:
        raise ValueError(f"unknown mode '{mode}' (infer or train)")
    for _ in range(warmup):
        step()
    res.step_rss_mb = _rss_now_mb()
    naive = _oracle(name) if oracle and mode == "infer" and imgsz <= ORACLE_MAX_SIZE else None
    if oracle and naive is None:
        res.note = f"no oracle run (families with tests/oracles, infer, imgsz <= {ORACLE_MAX_SIZE})"
    times, cpus, otimes = [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = step()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; before the oracle
    res.runs = [t * 1e3 for t in times]
    res.latency_ms = statistics.median(res.runs)
    res.latency_min_ms = min(res.runs)
    res.cpu_ms = statistics.median(cpus) * 1e3
    if naive is not None:  # after the peak-memory reading: the naive code needs far more memory
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                ref = naive(model, x)
                otimes.append(time.perf_counter() - t0)
        res.oracle_diff = max((a - b).abs().max().item() for a, b in zip(out, ref))
        res.oracle_ms = statistics.median(otimes) * 1e3
    return res


def run_config(
    name: str,
    imgsz: int,
    batch: int,
    mode: str,
    warmup: int = 1,
    repeats: int = 3,
    oracle: bool = False,
    threads: int | None = None,
    timeout: float | None = None,
) -> BenchResult:
    """Measure one configuration in a fresh subprocess (honest per-configuration peak memory)."""
    spec = {
        "name": name,
        "imgsz": imgsz,
        "batch": batch,
        "mode": mode,
        "warmup": warmup,
        "repeats": repeats,
        "oracle": oracle,
        "threads": threads,
    }
    cmd = [sys.executable, "-m", "yolo_plugins.bench", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return BenchResult(name, imgsz, batch, mode, note=f"timed out after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return BenchResult(name, imgsz, batch, mode, note=f"failed: {err}")
    return BenchResult(**json.loads(lines[-1]))


def run_suite(
    models=DEFAULT_MODELS,
    sizes=(320, 640),
    batches=(1, 8),
    modes=("infer", "train"),
    warmup: int = 1,
    repeats: int = 3,
    oracle: bool = False,
    threads: int | None = None,
    timeout: float | None = None,
    log=None,
) -> list[BenchResult]:
    """Run every (model, size, batch, mode) configuration; each in its own subprocess."""
    out = []
    for mode in modes:
        for size in sizes:
            for batch in batches:
                for name in models:
                    r = run_config(name, size, batch, mode, warmup, repeats, oracle, threads, timeout)
                    out.append(r)
                    if log:
                        log(_row(r, None))
    return out


def _fmt(v, nd=0):
    return "-" if v is None else f"{v:.{nd}f}"


def _row(r: BenchResult, ref: BenchResult | None) -> str:
    ratio = "-"
    if ref is not None and ref.latency_ms and r.latency_ms:
        ratio = f"{r.latency_ms / ref.latency_ms:.2f}"
    oracle = "-"
    if r.oracle_ms is not None:
        oracle = f"{r.oracle_ms:.0f} (naive/optimised {r.oracle_ms / r.latency_ms:.1f}, max diff {r.oracle_diff:.1e})"
    delta = None if r.peak_rss_mb is None or r.step_rss_mb is None else max(r.peak_rss_mb - r.step_rss_mb, 0.0)
    return (
        f"| {r.name} | {r.mode} | {r.imgsz} | {r.batch} | {_fmt(r.latency_ms)} | {_fmt(r.latency_min_ms)} | "
        f"{_fmt(r.cpu_ms)} | {ratio} | {_fmt(r.peak_rss_mb)} | {_fmt(delta)} | {oracle} | {r.note} |"
    )


def format_markdown(results: list[BenchResult]) -> str:
    """Markdown table; ``ratio`` is the latency relative to the first model of the same (mode, size, batch)."""
    import platform

    import torch

    threads = next((r.threads for r in results if r.threads), torch.get_num_threads())
    head = (
        f"torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{threads} threads; latency = median (min) wall time of timed steps after warm-up, CPU = median process CPU time "
        "(all threads; robust to load from other processes); peak RSS = ru_maxrss of the "
        "configuration's own process; step RSS delta = peak minus RSS after warm-up.\n\n"
    )
    lines = [
        (
            "| model | mode | imgsz | batch | latency ms | min ms | CPU ms | ratio | peak RSS MiB | delta after warm-up "
            "MiB | naive oracle ms | note |"
        ),
        "|" + "---|" * 12,
    ]
    first: dict[tuple, BenchResult] = {}
    for r in results:
        key = (r.mode, r.imgsz, r.batch)
        if r.latency_ms is not None:
            first.setdefault(key, r)
        lines.append(_row(r, first.get(key)))
    return head + "\n".join(lines) + "\n"


def _worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    res = _measure(**spec)
    print(json.dumps(asdict(res)), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])


def size_table(names: list[str], imgsz: int = 640) -> str:
    """Markdown table of backbone-only parameters (M) and GFLOPs (torch's FlopCounterMode, 2 FLOPs per MAC, the
    convention of Ultralytics' GFLOPs) for one ``imgsz x imgsz`` image, in eval mode, before and after ``fuse()``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .backbone import create_backbone
    from .layers import Fusable

    lines = [f"| backbone | params (M) | fused params (M) | GFLOPs @ {imgsz} |", "|---|---|---|---|"]
    for name in names:
        m = create_backbone(name).eval()
        params = sum(p.numel() for p in m.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.zeros(1, 3, imgsz, imgsz))
        for sub in reversed(list(m.modules())):
            if isinstance(sub, Fusable):
                sub.fuse()
        fused = sum(p.numel() for p in m.parameters())
        lines.append(f"| {name} | {params / 1e6:.2f} | {fused / 1e6:.2f} | {fc.get_total_flops() / 1e9:.1f} |")
    return "\n".join(lines)
