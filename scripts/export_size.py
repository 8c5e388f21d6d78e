"""Exported file size against the checkpoint, per model, size and format (docs/deployment.md).

    python scripts/export_size.py --models yolov8s.yaml yolov8s-transnext.yaml --imgsz 640 1024 --formats onnx

Each model gets trained-looking weights (:func:`yolo_plugins.tools.export_matrix.prepare_checkpoint`; freshly
initialised weights hide constants a converter folds, e.g. TransXNet's zero-initialised position tables) and is saved
as Ultralytics saves a trained checkpoint (``YOLO.save``: float16 weights), then exported with ``YOLO(pt).export``;
the table gives the checkpoint's size, the exported file's (folders summed) and their ratio. Float32 formats hold
twice the checkpoint's bytes per weight, so the stock model's ratio is the reference: a plugin model whose ratio
matches it stores no constants beyond its weights.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from ultralytics import YOLO

import yolo_plugins  # noqa: F401  (registers the plugin modules)
from yolo_plugins.tools.export_matrix import prepare_checkpoint


def size_mb(path: Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["yolov8s.yaml", "yolov8s-transnext.yaml"])
    ap.add_argument("--imgsz", nargs="+", type=int, default=[640])
    ap.add_argument("--formats", nargs="+", default=["onnx"])
    args = ap.parse_args(argv)
    lines = [
        f"{date.today()}; {platform.processor() or platform.machine()}; torch {torch.__version__}; "
        f"`python scripts/export_size.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| model | format | imgsz | .pt MB | exported MB | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            pt = prepare_checkpoint(name, tmp)
            for fmt in args.formats:
                for imgsz in args.imgsz:
                    out = YOLO(pt).export(format=fmt, imgsz=imgsz, device="cpu", verbose=False)
                    a, b = size_mb(pt), size_mb(out)
                    lines.append(f"| {name[:-5]} | {fmt} | {imgsz} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
                    print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
