"""Measure how far half precision moves each plugin block, backbone and model from float32 (and float32 from float64):
the worst layer-wise relative error over seeds, per dtype and mode (cast / autocast). The tolerances of
tests/test_precision.py are derived from this table (docs/precision.md).

Usage: python scripts/precision_errors.py [--seeds 10] [--cases NAME ...] [--out docs/precision-errors.md]
"""

from __future__ import annotations

import argparse

from yolo_plugins.tools.precision import CASES, error_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds per case (perturbed weights and input)")
    p.add_argument("--cases", nargs="*", default=None, help=f"subset of: {', '.join(CASES)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ns = p.parse_args(argv)
    text = error_table(ns.cases or list(CASES), seeds=ns.seeds, threads=ns.threads, log=print)
    print(text)
    if ns.out:
        with open(ns.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
