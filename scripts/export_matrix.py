"""The export matrix: plugin models through every export format, compared with PyTorch (docs/deployment.md's table).

    python scripts/export_matrix.py                                   # every family, 640 and 384x640, every format
    python scripts/export_matrix.py --models yolov8n-repvit.yaml --sizes 320 --formats onnx ncnn
    python scripts/export_matrix.py --out matrix.md --json matrix.json
    python scripts/export_matrix.py --render a.json b.json --out matrix.md   # one table from earlier runs

Each model gets trained-looking weights (perturbed, BatchNorm statistics from real photos), is exported with
``YOLO(...).export``, loaded back with ``YOLO(exported)``, predicted and compared with the fused PyTorch model within
the format's tolerance. See :mod:`yolo_plugins.tools.export_matrix`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from yolo_plugins.tools.export_matrix import (
    CASES,
    case_by_key,
    format_markdown,
    header,
    rows_from_json,
    rows_to_json,
    run_matrix,
)

DEFAULT_MODELS = (
    "yolov8n-repvit.yaml",
    "yolov8n-transxnet.yaml",
    "yolov8n-transnext.yaml",
    "yolov8n-ca.yaml",
    "yolo11n-timm_convnext_atto.yaml",
)


def size(text: str) -> int | tuple[int, int]:
    """``640`` or ``384x640`` (height x width)."""
    h, _, w = text.lower().partition("x")
    return (int(h), int(w)) if w else int(h)


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model YAMLs (shipped or derived)")
    ap.add_argument("--sizes", nargs="+", type=size, default=[640, (384, 640)], help="640 or HxW")
    ap.add_argument("--formats", nargs="+", default=[c.key for c in CASES], help="case keys (see CASES)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per exported model (median)")
    ap.add_argument("--folder", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--render", nargs="+", type=Path, help="no run: one table from --json files of earlier runs")
    args = ap.parse_args(argv)
    command = "python scripts/export_matrix.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.render:
        rows = [r for f in args.render for r in rows_from_json(json.loads(f.read_text()))]
        command += "  (rows of earlier runs, judged with the current tolerances)"
    else:
        cases = [case_by_key(k) for k in args.formats]
        with tempfile.TemporaryDirectory(prefix="yolo-plugins-export-") as tmp:
            rows = run_matrix(args.models, args.sizes, cases, args.folder or tmp, log=_log, repeats=args.repeats)
    table = format_markdown(rows, header=header(command.strip()))
    print(table)
    if args.out:
        args.out.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows_to_json(rows), indent=1))
    return table


if __name__ == "__main__":
    main()
