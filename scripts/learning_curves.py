"""Training curves of models through Ultralytics' trainer under the benchmark's settings, with variations: dataset
size, augmentation on/off, any train argument. Prints the per-epoch training losses of every run side by side.

This is the tool behind docs/benchmark.md's answer to "why does TransNeXt's loss stay flat on the embedded data":

    python scripts/learning_curves.py --models yolov8n.yaml yolov8n-transnext.yaml --epochs 6 \
        --variants base noaug "n_train=16 noaug epochs=60"
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

from yolo_plugins.tools.benchmark import NO_AUGMENTATION, BenchmarkConfig, _label, _train
from yolo_plugins.tools.data import DatasetSpec, make_dataset


def _variant(text: str, base: BenchmarkConfig) -> BenchmarkConfig:
    """``"n_train=16 noaug epochs=60 lr0=0.001"`` -> a config: known fields set, ``noaug`` switches augmentation
    off, anything else is an Ultralytics train argument."""
    cfg = replace(base, train_args=dict(base.train_args))
    for token in text.split():
        if token == "base":
            continue
        if token == "noaug":
            cfg.train_args.update(NO_AUGMENTATION)
            continue
        key, value = token.split("=", 1)
        value = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
        if key in BenchmarkConfig.__dataclass_fields__:
            setattr(cfg, key, value)
        else:
            cfg.train_args[key] = value
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["yolov8n.yaml", "yolov8n-transnext.yaml"])
    p.add_argument("--variants", nargs="+", default=["base"], help="each: 'base' or space-separated key=value/noaug")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--project", default="runs/learning-curves")
    ns = p.parse_args()
    base = BenchmarkConfig(epochs=ns.epochs, imgsz=ns.imgsz, project=ns.project)
    base.train_args["val"] = False  # training losses only: no validation pass per epoch
    summary = {}
    for v in ns.variants:
        cfg = _variant(v, base)
        cfg.name = v.replace(" ", "_").replace("=", "-") or "base"
        data = str(make_dataset(Path(ns.project) / f"data-{cfg.n_train}", DatasetSpec(cfg.n_train, cfg.n_val)))
        for m in ns.models:
            _, seconds = _train(m, _label(m), cfg.seed, cfg, data)
            with open(cfg.run_dir / _label(m) / f"seed{cfg.seed}" / "results.csv") as fh:
                rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(fh)]
            cls = [round(float(r["train/cls_loss"]), 3) for r in rows]
            box = [round(float(r["train/box_loss"]), 3) for r in rows]
            summary[f"{v} | {_label(m)}"] = {"cls": cls, "box": box, "train_s": round(seconds)}
            print(f"{v:35s} {_label(m):28s} cls {cls}  box {box}  ({seconds:.0f}s)", flush=True)
    out = Path(ns.project) / "summary.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"summary: {out}")


if __name__ == "__main__":
    main()
