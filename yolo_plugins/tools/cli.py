"""``yolo-plugins`` command: Ultralytics' ``yolo`` CLI with the plugin registered, plus ``list`` and ``shapes``.

yolo-plugins list
yolo-plugins shapes yolov8n-ca.yaml --imgsz 640
yolo-plugins swap yolo11n-seg.yaml --backbone repvit[:m1_5] [-o FILE]
yolo-plugins weights [repvit_m1_0 [imagenet|TAG]] [--no-download]
yolo-plugins benchmark [--models yolov8n.yaml yolov8n-repvit.yaml ...] [--data coco8.yaml] [--epochs 10]
yolo-plugins train model=yolo11n-seg-repvit.yaml data=... epochs=...   # any `yolo` command passes through
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PluginError
from ..integration.compat import SUPPORTED_ULTRALYTICS

OWN_COMMANDS = ("list", "shapes", "swap", "weights", "benchmark")


def _cmd_list(_: argparse.Namespace) -> int:
    from ..nn.backbone import Backbone
    from ..nn.registry import list_modules

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
    from ..integration.names import models_help

    print("\n" + models_help())
    return 0


def _cmd_swap(ns: argparse.Namespace) -> int:
    from ..integration.swap import swap

    out = swap(ns.stock, ns.backbone, ns.output, ns.force)
    print(out if ns.output == "-" else f"wrote {out}")
    return 0


def _cmd_shapes(ns: argparse.Namespace) -> int:
    from .shapes import format_shapes, model_shapes

    print(format_shapes(model_shapes(ns.model, ns.imgsz), ns.imgsz))
    return 0


def _cmd_weights(ns: argparse.Namespace) -> int:
    from ..nn.backbone import backbone_families
    from ..weights.hub import CHECKPOINTS, find_checkpoint, resolve_weights, weights_dir

    folder = weights_dir()
    if not ns.backbone:
        rows = [
            (
                c.name,
                c.tag + (" (imagenet)" if c.default else ""),
                c.file,
                "yes" if (folder / c.file).is_file() else "-",
                c.url,
            )
            for c in CHECKPOINTS
        ]
        head = ("backbone", "tag", "file", "present", "url")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        for r in [head, *rows]:
            print("  ".join(f"{v:<{w}}" for v, w in zip(r[:4], widths)) + "  " + r[4])
        print(f"\nweights folder: {folder} (YOLO_PLUGINS_WEIGHTS_DIR to move it)")
        return 0
    family, _, variant = ns.backbone.replace(":", "_", 1).partition("_")
    if family not in backbone_families():
        raise PluginError(f"unknown backbone '{ns.backbone}'; `yolo-plugins weights` lists the published checkpoints")
    c = find_checkpoint(family, variant, ns.tag)
    if c is not None and ns.no_download and not (folder / c.file).is_file():
        print(f"missing: put {c.url} at {folder / c.file}")
        return 1
    print(resolve_weights(family, variant, ns.tag))
    return 0


BENCHMARK_HELP = {
    "models": "models to compare: stock names, plugin names (shipped or derived) or YAML paths",
    "data": "an Ultralytics data YAML; None: the embedded generated dataset, made in the project folder",
    "imgsz": "training and validation image size",
    "epochs": "training epochs per model and seed",
    "batch": "batch size (also nbs: one optimizer step per batch)",
    "seeds": "trainings per model, with seeds SEED, SEED+1, ...: the tables report mean, std and range",
    "seed": "first seed",
    "weights": "backbone weights for the plugin models, e.g. imagenet (published checkpoints; labelled +imagenet)",
    "device": "training device, e.g. cpu, 0 or 0,1; empty: Ultralytics' choice",
    "workers": "dataloader workers",
    "project": "folder of benchmark runs",
    "name": "run name: results go to PROJECT/NAME; a re-run with the same name skips finished trainings",
    "n_train": "embedded dataset: training images",
    "n_val": "embedded dataset: validation images",
    "latency_runs": "timed forward passes for the CPU (and GPU) latency",
}


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``yolo-plugins benchmark`` (shared with scripts/benchmark.py); any ``key=value`` after them is
    an Ultralytics train argument for every model (see :func:`benchmark_extras`)."""
    from .benchmark import BenchmarkConfig

    d = BenchmarkConfig()
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (
        "Any Ultralytics train argument passes through as key=value, the same for every model, and is recorded with "
        "the results, e.g. lr0=0.001 mosaic=1.0. Set by default: "
        + " ".join(f"{k}={v}" for k, v in d.train_args.items())
    )
    p.add_argument("--models", nargs="+", default=d.models, help=BENCHMARK_HELP["models"])
    p.add_argument("--data", default=None, help=BENCHMARK_HELP["data"])
    for name in ("imgsz", "epochs", "batch", "seeds", "seed", "workers", "n_train", "n_val", "latency_runs"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name), help=BENCHMARK_HELP[name])
    for name in ("weights", "device", "project", "name"):
        p.add_argument(f"--{name}", default=getattr(d, name), help=BENCHMARK_HELP[name])


def benchmark_extras(tokens: list[str]) -> dict:
    """``["lr0=0.001", "mosaic=1.0"]`` -> ``{"lr0": 0.001, "mosaic": 1.0}`` (values read as YAML scalars)."""
    import yaml

    extras = {}
    for t in tokens:
        key, sep, value = t.partition("=")
        if not sep or not key or key.startswith("-"):
            raise PluginError(f"unexpected argument '{t}': options are --name VALUE, train arguments key=value")
        extras[key] = yaml.safe_load(value) if value else ""
    return extras


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

    if argv[:1] in (["--version"], ["-V"]):
        import torch
        import ultralytics

        print(
            f"yolo-plugins {yolo_plugins.__version__} (ultralytics {ultralytics.__version__}, "
            f"torch {torch.__version__}, supported ultralytics {SUPPORTED_ULTRALYTICS})"
        )
        return 0
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
        wt = sub.add_parser(
            "weights", help="published ImageNet checkpoints: list them, or download one and print its path"
        )
        wt.add_argument("backbone", nargs="?", help="e.g. repvit_m1_0 (without: list every checkpoint)")
        wt.add_argument("tag", nargs="?", default="imagenet", help="imagenet (default), a tag or an official file name")
        wt.add_argument("--no-download", action="store_true", help="only say where the file is or should go")
        add_benchmark_args(sub.add_parser("benchmark", help="train/validate/time baselines and plugin models"))
        ns, rest = p.parse_known_args(argv)
        if ns.cmd != "benchmark" and rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            if ns.cmd == "benchmark":
                ns.extra = benchmark_extras(rest)
            cmds = {
                "list": _cmd_list,
                "shapes": _cmd_shapes,
                "swap": _cmd_swap,
                "weights": _cmd_weights,
                "benchmark": _cmd_benchmark,
            }
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
