"""yolo-plugins: TransNeXt, TransXNet, RepViT backbones and ContextAggregation for Ultralytics YOLO model YAMLs.

``import yolo_plugins`` registers every module with Ultralytics' YAML parser and makes plugin models nameable like
stock ones (see :mod:`yolo_plugins.patch`); ``yolo_plugins.unregister()`` restores Ultralytics exactly.
"""

import importlib as _importlib

from .backbone import Backbone, Feature, FeatureInfo, create_backbone, list_backbones
from .errors import (
    CheckpointError,
    IncompatibleUltralyticsError,
    ModelNameError,
    PluginError,
    UnknownModuleError,
    YAMLError,
)
from .patch import is_registered, register, unregister
from .registry import list_modules, register_module, unregister_module

FAMILIES = (
    "context_aggregation",
    "repvit",
    "timm_backbone",
    "transnext",
    "transxnet",
)  # module files that register plugin modules on import
for _name in FAMILIES:
    _importlib.import_module(f"{__name__}.{_name}")

__version__ = "0.1.0"

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
