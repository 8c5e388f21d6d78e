"""Error types: every message says what is wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "PluginError",
    "YAMLError",
    "UnknownModuleError",
    "ModelNameError",
    "CheckpointError",
    "IncompatibleUltralyticsError",
]


class PluginError(ValueError):
    """Base class of every error yolo-plugins raises on purpose (bad YAML, arguments, checkpoints, inputs)."""


class YAMLError(PluginError):
    """A model YAML row that cannot be built: unknown module, wrong arguments, bad feature index."""


class UnknownModuleError(YAMLError, KeyError):
    """A YAML row names a module nobody defines. Also a ``KeyError``, the type Ultralytics' own lookup raises."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class ModelNameError(PluginError, FileNotFoundError):
    """A model name that is neither a file, a stock YAML, a shipped YAML nor a derivable ``<stock>-<family>`` name,
    or one whose derivation is impossible (e.g. a stride-64 head). Also a ``FileNotFoundError``, as for stock names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(PluginError):
    """A weights file that cannot be loaded into a backbone: missing, not a checkpoint, other variant."""


class IncompatibleUltralyticsError(RuntimeError):
    """The installed Ultralytics lacks an internal the registry relies on."""
