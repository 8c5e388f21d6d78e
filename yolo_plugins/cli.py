"""``yolo-plugins`` command: Ultralytics' ``yolo`` CLI with the plugin registered, plus ``list`` and ``shapes``.

yolo-plugins list
yolo-plugins shapes yolov8n-ca.yaml --imgsz 640
yolo-plugins swap yolo11n-seg.yaml --backbone repvit[:m1_5] [-o FILE]
yolo-plugins benchmark [--models yolov8n.yaml yolov8n-repvit.yaml ...] [--data coco8.yaml] [--epochs 10]
yolo-plugins train model=yolo11n-seg-repvit.yaml data=... epochs=...   # any `yolo` command passes through
"""

from __future__ import annotations

import argparse
import sys

from .errors import PluginError

OWN_COMMANDS = ("list", "shapes", "swap", "benchmark")


def _cmd_list(_: argparse.Namespace) -> int:
    from .backbone import Backbone
    from .registry import list_modules

    rows = []
    for e in list_modules():
        args = e.signature
        if isinstance(e.cls, type) and issubclass(e.cls, Backbone):
            args += f"  variants: {', '.join(e.cls.variants) or e.cls.variants_help}"
        rows.append((e.name, e.rule + (" +n" if e.repeat else ""), args, e.summary))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"{'module':<{w0}}  {'channels':<{w1}}  arguments / description")
    for name, rule, args, doc in rows:
        print(f"{name:<{w0}}  {rule:<{w1}}  {args}\n{'':<{w0 + w1 + 4}}{doc}")
    print(
        "\nchannel rules: same = output channels equal input (built as cls(c1, *args)); scaled = first arg is c2, "
        "scaled by width like Conv (cls(c1, c2, *args[1:])), +n = takes the row's repeats; backbone = outputs a "
        "feature list (pick with Feature rows); feature = picks one backbone feature"
    )
    from .names import models_help

    print("\n" + models_help())
    return 0


def _cmd_swap(ns: argparse.Namespace) -> int:
    from .swap import swap

    out = swap(ns.stock, ns.backbone, ns.output, ns.force)
    print(out if ns.output == "-" else f"wrote {out}")
    return 0


def _cmd_shapes(ns: argparse.Namespace) -> int:
    from .shapes import format_shapes, model_shapes

    print(format_shapes(model_shapes(ns.model, ns.imgsz), ns.imgsz))
    return 0


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``yolo-plugins benchmark`` (shared with scripts/benchmark.py)."""
    from .benchmark import BenchmarkConfig

    d = BenchmarkConfig()
    p.add_argument("--models", nargs="+", default=d.models, help="baselines and plugin models (YAML names or paths)")
    p.add_argument("--data", default=None, help="Ultralytics data YAML (default: the embedded generated dataset)")
    for name in ("imgsz", "epochs", "batch", "seed", "workers", "n_train", "n_val", "latency_runs"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("device", "project", "name"):
        p.add_argument(f"--{name}", default=getattr(d, name))


def _cmd_benchmark(ns: argparse.Namespace) -> int:
    from .benchmark import BenchmarkConfig, run_benchmark

    fields = BenchmarkConfig.__dataclass_fields__
    cfg = BenchmarkConfig(**{k: v for k, v in vars(ns).items() if k in fields})
    try:
        run_benchmark(cfg)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``yolo-plugins`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    import yolo_plugins  # noqa: F401  registers the plugin modules

    if argv and argv[0] in OWN_COMMANDS:
        p = argparse.ArgumentParser(prog="yolo-plugins", description="YOLO plugin modules for Ultralytics")
        sub = p.add_subparsers(dest="cmd", required=True)
        sub.add_parser("list", help="registered modules, their channel rule and arguments")
        s = sub.add_parser("shapes", help="per-layer table of a model YAML")
        s.add_argument("model", help="model YAML name (yolo11n-seg-repvit.yaml) or path")
        s.add_argument("--imgsz", default="640", help="input size: 640 or height,width (default 640)")
        w = sub.add_parser("swap", help="write a stock model with a plugin backbone as a YAML file to edit")
        w.add_argument("stock", help="stock model name (yolo11n-seg.yaml) or YAML path")
        w.add_argument("--backbone", required=True, help="family or family:variant, e.g. repvit or transnext:tiny")
        w.add_argument("-o", "--output", help="file to write (default: <stock>-<backbone>.yaml here; - prints it)")
        w.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
        add_benchmark_args(sub.add_parser("benchmark", help="train/validate/time baselines and plugin models"))
        ns = p.parse_args(argv)
        try:
            cmds = {"list": _cmd_list, "shapes": _cmd_shapes, "swap": _cmd_swap, "benchmark": _cmd_benchmark}
            return cmds[ns.cmd](ns)
        except (PluginError, FileNotFoundError) as e:
            print(f"yolo-plugins: error: {e}", file=sys.stderr)
            return 2
    # everything else is Ultralytics' own CLI (train/val/predict/export/... key=value arguments)
    from ultralytics.cfg import entrypoint

    sys.argv[:] = ["yolo", *argv]  # Ultralytics reads the same list object (ultralytics.cfg.ARGV)
    try:
        entrypoint()
    except PluginError as e:
        print(f"yolo-plugins: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
