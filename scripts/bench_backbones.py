"""Latency and peak memory of plugin backbones at several sizes, batches and modes, as a Markdown table.

    python scripts/bench_backbones.py                                   # transnext_micro, transxnet_t, repvit_m0_9
    python scripts/bench_backbones.py --models transnext_micro --sizes 640 --batches 1 --modes infer --oracle

Each configuration runs in its own subprocess (peak memory = that process's ru_maxrss); families that are not
importable are listed with a note. See :mod:`yolo_plugins.bench`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_plugins.bench import DEFAULT_MODELS, format_markdown, run_suite


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="create_backbone names")
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="square input sizes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    ap.add_argument("--oracle", action="store_true", help="also time the naive oracle (infer) and report max diff")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    results = run_suite(
        args.models,
        args.sizes,
        args.batches,
        args.modes,
        args.warmup,
        args.repeats,
        args.oracle,
        args.threads,
        args.timeout,
        log=lambda row: print(row, file=sys.stderr, flush=True),
    )
    table = format_markdown(results)
    print(table)
    if args.out:
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
