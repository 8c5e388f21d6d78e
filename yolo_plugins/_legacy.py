"""Module paths of yolo-plugins 0.1.0, kept for the checkpoints it wrote.

A ``best.pt`` pickles every module of the model by class path, e.g. ``yolo_plugins.transnext.TransNeXt``. Since 0.2.0
the network modules live in :mod:`yolo_plugins.nn`; each old path is an alias (a ``sys.modules`` entry) of its new
module, so unpickling an old checkpoint finds the same classes, and restricted loading (``ULTRALYTICS_SAFE_LOAD=1``)
allows them under both names (:func:`aliases`).
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["LEGACY_MODULES", "aliases", "install"]

LEGACY_MODULES = {  # 0.1.0 path -> current path, for every module whose classes a checkpoint can hold
    f"yolo_plugins.{name}": f"yolo_plugins.nn.{name}"
    for name in ("backbone", "layers", "context_aggregation", "repvit", "timm_backbone", "transnext", "transxnet")
}


def aliases(module: str) -> list[str]:
    """The 0.1.0 names of the current ``module`` (empty for modules that did not move)."""
    return [old for old, new in LEGACY_MODULES.items() if new == module]


def install() -> None:
    """Make every 0.1.0 module path importable as its current module."""
    for old, new in LEGACY_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
