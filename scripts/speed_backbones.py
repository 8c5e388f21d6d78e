"""Latency and memory of plugin backbones at several sizes, batches and modes, interleaved in one run.

    python scripts/speed_backbones.py                                  # transnext_micro, transxnet_t, repvit_m0_9
    python scripts/speed_backbones.py --models transnext_micro --sizes 320 --modes infer --oracle

Each configuration runs in its own worker process (own peak memory). See :mod:`yolo_plugins.tools.speed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_plugins.tools.speed import DEFAULT_BACKBONES, Spec, measure, report


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_BACKBONES), help="create_backbone names")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="square input sizes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--oracle", action="store_true", help="also time the naive oracle (infer, <= 320 px), max diff")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    specs = [
        Spec(
            m,
            kind="backbone",
            imgsz=s,
            batch=b,
            mode=mode,
            device=args.device,
            threads=args.threads,
            oracle=args.oracle,
        )
        for mode in args.modes
        for s in args.sizes
        for b in args.batches
        for m in args.models
    ]
    results = measure(specs, args.rounds, args.warmup, log=lambda m: print(m, file=sys.stderr))
    return report(results, args.threads, args.rounds, args.out)


if __name__ == "__main__":
    main()
