"""Time TransXNet's optimised forward against the naive oracle (tests/oracles/transxnet_naive.py) in one run.

    python scripts/bench_transxnet.py --variant t --imgsz 640 --runs 5 --threads 2

Runs are interleaved (naive, optimised, naive, ...) so that load from other processes hits both alike; prints the
minimum and median wall time and process CPU time per forward (batch 1, eval, no grad) and the max |difference|.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from oracles.transxnet_naive import naive_forward

from yolo_plugins.transxnet import TransXNet


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="t")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640], help="H [W]")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (args.imgsz * 2)[:2]
    torch.manual_seed(0)
    model = TransXNet(args.variant).eval()
    with torch.no_grad():  # non-trivial position encodings / layer scales so both paths do real work
        for n, p in model.named_parameters():
            if "relative_pos_enc" in n or "layer_scale" in n:
                p.normal_(0.0, 0.5)
    sd, cfg = model.state_dict(), model.config(args.variant)
    x = torch.randn(args.batch, 3, h, w)
    fns = {"naive": lambda: naive_forward(sd, cfg, x), "optimised": lambda: model(x)}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        outs = {k: f() for k, f in fns.items()}  # warm-up (+ fills the inference cache)
        diff = max((a - b).abs().max().item() for a, b in zip(outs["naive"], outs["optimised"]))
        for _ in range(args.runs):
            for k, f in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                f()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    print(
        f"TransXNet-{args.variant.upper()} {args.batch}x3x{h}x{w}, eval, no_grad, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.runs} interleaved runs; max |naive - optimised| = {diff:.2e}"
    )
    res = {}
    for k in fns:
        res[k] = {"wall_min": min(wall[k]), "wall_med": statistics.median(wall[k]), "cpu_min": min(cpu[k])}
        print(
            f"  {k:10s} wall min {res[k]['wall_min']:.3f} s  median {res[k]['wall_med']:.3f} s  "
            f"cpu min {res[k]['cpu_min']:.3f} s"
        )
    print(
        f"  speed-up (wall min) {res['naive']['wall_min'] / res['optimised']['wall_min']:.2f}x, "
        f"(cpu min) {res['naive']['cpu_min'] / res['optimised']['cpu_min']:.2f}x"
    )
    res["max_abs_diff"] = diff
    return res


if __name__ == "__main__":
    main()
