"""Train, validate and time baselines against plugin models (same code as `yolo-plugins benchmark`).

python scripts/benchmark.py                                   # the default CPU run (docs/benchmark.md)
python scripts/benchmark.py --data VOC.yaml --imgsz 640 --epochs 100 --models yolov8s.yaml yolov8s-repvit.yaml
"""

import argparse
import sys

from yolo_plugins.tools.cli import _cmd_benchmark, add_benchmark_args, benchmark_extras

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_benchmark_args(parser)
    ns, rest = parser.parse_known_args()
    ns.extra = benchmark_extras(rest)
    sys.exit(_cmd_benchmark(ns))
