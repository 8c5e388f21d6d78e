"""Error types: every message says what is wrong and how to fix it."""

from __future__ import annotations

__all__ = ["PluginError", "YAMLError", "CheckpointError", "IncompatibleUltralyticsError"]


class PluginError(ValueError):
    """Base class of every error yolo-plugins raises on purpose (bad YAML, arguments, checkpoints, inputs)."""


class YAMLError(PluginError):
    """A model YAML row that cannot be built: unknown module, wrong arguments, bad feature index."""


class CheckpointError(PluginError):
    """A weights file that cannot be loaded into a backbone: missing, not a checkpoint, other variant."""


class IncompatibleUltralyticsError(RuntimeError):
    """The installed Ultralytics lacks an internal the registry relies on."""
