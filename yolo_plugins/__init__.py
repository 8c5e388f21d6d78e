"""yolo-plugins: TransNeXt, TransXNet, RepViT backbones and ContextAggregation for Ultralytics YOLO model YAMLs.

``import yolo_plugins`` registers every module with Ultralytics' YAML parser and makes plugin models nameable like
stock ones (see :mod:`yolo_plugins.integration.patch`); ``yolo_plugins.unregister()`` restores Ultralytics exactly.

The package by role: ``nn/`` the network modules (registry, backbone base, shared layers, one file per family),
``weights/`` the published checkpoints (table, download, loading), ``integration/`` the hooks into Ultralytics (YAML
parser, model names, derivation, optimizer, autoload), ``tools/`` the command line, benchmark and speed tools, and
``cfg/models/`` the shipped model YAMLs.
"""

import importlib as _importlib

from . import _legacy
from ._version import __version__
from .errors import (
    CheckpointError,
    IncompatibleUltralyticsError,
    ModelNameError,
    PluginError,
    UnknownModuleError,
    YAMLError,
)
from .integration.patch import is_registered, register, unregister
from .nn.backbone import Backbone, Feature, FeatureInfo, create_backbone, list_backbones
from .nn.registry import list_modules, register_module, unregister_module

FAMILIES = (
    "context_aggregation",
    "repvit",
    "timm_backbone",
    "transnext",
    "transxnet",
)  # files in nn/ that register plugin modules on import
for _name in FAMILIES:
    _importlib.import_module(f"{__name__}.nn.{_name}")
_legacy.install()  # checkpoints of 0.1.0 name the modules by their old paths

register()

__all__ = [
    "Backbone",
    "Feature",
    "FeatureInfo",
    "create_backbone",
    "list_backbones",
    "register",
    "unregister",
    "is_registered",
    "register_module",
    "unregister_module",
    "list_modules",
    "PluginError",
    "YAMLError",
    "CheckpointError",
    "UnknownModuleError",
    "ModelNameError",
    "IncompatibleUltralyticsError",
    "__version__",
]
