"""The Ultralytics releases yolo-plugins supports, and the one place that names the installed one.

``SUPPORTED_ULTRALYTICS`` is the dependency range of ``pyproject.toml`` (a test keeps the two equal) and exactly the
range CI tests: its oldest release and 8.4.100 in a compatibility job, the newest release in it with the full suite.
"""

from __future__ import annotations

import os
import re

__all__ = ["SUPPORTED_ULTRALYTICS", "in_supported_range", "load_yaml", "tasks", "ultralytics_version"]

SUPPORTED_ULTRALYTICS = ">=8.3.100,<8.5"


def tasks():
    """``ultralytics.nn.tasks`` (imported on first use: importing yolo-plugins' pure parts needs no Ultralytics)."""
    import ultralytics.nn.tasks as t

    return t


def ultralytics_version() -> str:
    """The installed Ultralytics version string, or ``"unknown"``."""
    import ultralytics

    return str(getattr(ultralytics, "__version__", "unknown"))


def _tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def in_supported_range(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) lies in :data:`SUPPORTED_ULTRALYTICS`."""
    v = _tuple(version or ultralytics_version())
    if not v:
        return False
    for spec in SUPPORTED_ULTRALYTICS.split(","):
        op, bound = re.match(r"\s*([<>=!]=?)\s*(\S+)", spec).groups()
        b = _tuple(bound)
        n = len(b)
        ok = {">=": v >= b, ">": v > b, "<=": v[:n] <= b, "<": v[:n] < b, "==": v[:n] == b, "!=": v[:n] != b}[op]
        if not ok:
            return False
    return True


def load_yaml(path: str | os.PathLike) -> dict:
    """A model YAML file as a dict, read as Ultralytics reads it (safe loader), on every supported release."""
    from pathlib import Path

    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8", errors="ignore")) or {}
