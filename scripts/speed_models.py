"""Whole-model speed: plugin models against their stock twins, interleaved in one run (docs/speed.md's tables).

    python scripts/speed_models.py                        # YOLOv8s and its TransNeXt/TransXNet/RepViT twins, 2 threads:
                                                          # inference 640 px batch 1 (eager, ONNX Runtime and
                                                          # OpenVINO) and one training step 320 px batch 8
    python scripts/speed_models.py --against 1a86c24      # plus the plugin models of another commit, same run
    python scripts/speed_models.py --device cuda:0        # on a GPU (eager; fused attention kernels)
    python scripts/speed_models.py --models yolo11n.yaml yolo11n-repvit.yaml --imgsz 320 --no-train

Each model runs in its own worker process (own peak memory); every round times each worker once. See
:mod:`yolo_plugins.tools.speed`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from yolo_plugins.tools.speed import DEFAULT_MODELS, Spec, measure, report, stock_twin

ROOT = Path(__file__).resolve().parents[1]
# glibc: serve large tensors from the heap and never return freed memory to the OS, so repeated forwards stop paying
# page faults for fresh buffers (costs resident memory; users set the same variables before starting Python)
MALLOC_TUNED = ("MALLOC_MMAP_THRESHOLD_=4294967296", "MALLOC_TRIM_THRESHOLD_=68719476736")


def checkout(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` of this repository, unpacked into ``into`` (no worktree state is left behind)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def specs_for(args: argparse.Namespace, against: Path | None) -> list[Spec]:
    common = dict(device=args.device, threads=args.threads)
    out = []
    if not args.no_infer:
        runtimes = ["torch"]
        if args.device == "cpu":
            runtimes += [] if args.no_onnx else ["onnx"]
            runtimes += [] if args.no_openvino or importlib.util.find_spec("openvino") is None else ["openvino"]
        for rt in runtimes:
            for m in args.models:
                out.append(Spec(m, imgsz=args.imgsz, batch=args.batch, runtime=rt, **common))
                if args.channels_last_stock and rt == "torch" and stock_twin(m) is None:
                    out.append(Spec(m, imgsz=args.imgsz, batch=args.batch, channels_last=True, **common))
    if not args.no_train:
        for m in args.models:
            out.append(Spec(m, imgsz=args.train_imgsz, batch=args.train_batch, mode="train", **common))
    if against is not None:  # the plugin models of the other commit, in the same configurations
        out += [
            Spec(**{**s.__dict__, "root": str(against), "label": f"{s.name} @ {args.against}"})
            for s in list(out)
            if stock_twin(s.name) is not None and s.runtime == "torch" and not s.channels_last
        ]
    return out


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model YAMLs (shipped or derived names)")
    ap.add_argument("--imgsz", type=int, default=640, help="inference size")
    ap.add_argument("--batch", type=int, default=1, help="inference batch")
    ap.add_argument("--train-imgsz", type=int, default=320)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per worker")
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads per worker")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--no-infer", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime (CPU only anyway)")
    ap.add_argument(
        "--no-openvino", action="store_true", help="skip OpenVINO (CPU only; skipped anyway where it is not installed)"
    )
    ap.add_argument("--channels-last-stock", action="store_true", help="also time each stock model channels-last")
    ap.add_argument(
        "--malloc-tuned",
        action="store_true",
        help=f"run every worker with glibc's allocator told to keep freed memory ({' '.join(MALLOC_TUNED)})",
    )
    ap.add_argument("--against", metavar="REF", help="also measure the plugin models of this git commit")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    if args.malloc_tuned:  # inherited by every worker, stock and plugin alike
        os.environ.update(dict(kv.split("=") for kv in MALLOC_TUNED))
    with tempfile.TemporaryDirectory(prefix="yolo-plugins-against-") as tmp:
        against = checkout(args.against, Path(tmp)) if args.against else None
        results = measure(specs_for(args, against), args.rounds, args.warmup, log=lambda m: print(m, file=sys.stderr))
    extra = "; glibc malloc tuned (" + " ".join(MALLOC_TUNED) + ")" if args.malloc_tuned else ""
    return report(results, args.threads, args.rounds, args.out, extra)


if __name__ == "__main__":
    main()
