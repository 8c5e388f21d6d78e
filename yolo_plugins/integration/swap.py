"""``yolo-plugins swap``: write a stock model with a plugin backbone as a commented YAML file to edit.

The YAML is what the derived name would build (:mod:`yolo_plugins.integration.derive`); the file is the user's to
change (scale -> variant map, feature rows, neck). An existing file is never overwritten unless asked.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PluginError

__all__ = ["swap"]


def swap(stock: str | os.PathLike, backbone: str, output: str | os.PathLike | None = None, force: bool = False) -> str:
    """Derive ``stock`` with ``backbone`` and write it.

    Args:
        stock: A stock model name (``yolo11n-seg.yaml``; the scale letter is kept in the output name) or a YAML path.
        backbone: ``family`` or ``family:variant`` (``repvit``, ``transnext:tiny``).
        output: File to write; default ``<stock name>-<backbone>.yaml`` in the working folder; ``"-"`` returns the
            text without writing.
        force: Overwrite ``output`` if it exists.

    Returns:
        The path written, or the YAML text when ``output == "-"``.
    """
    from .._version import __version__
    from .compat import tasks, ultralytics_version
    from .derive import derive, parse_backbone, to_yaml

    choice = parse_backbone(backbone)
    d = tasks().yaml_model_load(stock)  # a path, or a stock name resolved like Ultralytics does
    source = Path(str(stock)).name
    derived = derive(d, choice, source=f"{source}" if Path(str(stock)).is_file() else f"Ultralytics' {source}")
    name = f"{Path(str(stock)).stem}-{choice.token}.yaml"
    text = to_yaml(derived, name, f" {__version__} from ultralytics {ultralytics_version()}")
    if output == "-":
        return text
    path = Path(output) if output else Path.cwd() / name
    if path.exists() and not force:
        raise PluginError(f"{path} exists; choose another file with -o, or pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)
