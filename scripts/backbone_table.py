"""Backbone-only parameter counts and GFLOPs of every plugin backbone variant (docs/backbones.md's size table).

python scripts/backbone_table.py [--imgsz 640] [--models repvit_m0_9 ...]
"""

import argparse

import yolo_plugins
from yolo_plugins.tools.speed import size_table

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--models", nargs="+", default=yolo_plugins.list_backbones())
    args = ap.parse_args()
    print(size_table(args.models, args.imgsz))
