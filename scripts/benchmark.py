"""Train, validate and time baselines against plugin models (same code as `yolo-plugins benchmark`).

python scripts/benchmark.py                                   # ~15 min CPU run on the embedded dataset
python scripts/benchmark.py --data VOC.yaml --imgsz 640 --epochs 100 --models yolov8s.yaml yolov8s-repvit.yaml
"""

import argparse
import sys

from yolo_plugins.cli import _cmd_benchmark, add_benchmark_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(parser)
    sys.exit(_cmd_benchmark(parser.parse_args()))
