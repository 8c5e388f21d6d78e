"""Where yolo-plugins keeps files: the cache folder (derived YAMLs, downloaded weights) and the shipped YAMLs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "shipped_dir"]


def cache_dir() -> Path:
    """Where derived YAMLs and downloaded weights go: ``$YOLO_PLUGINS_CACHE_DIR``, else ``$XDG_CACHE_HOME/yolo-plugins``
    (default ``~/.cache/yolo-plugins``)."""
    env = os.environ.get("YOLO_PLUGINS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "yolo-plugins"


def shipped_dir() -> Path:
    """The shipped model YAMLs, inside the package where Ultralytics keeps its own (``model_yamls/`` of a checkout
    links to it)."""
    return Path(__file__).resolve().parent / "cfg" / "models"
