"""Plugin models by bare name, found the way Ultralytics finds its stock ones, from any working folder.

A model name such as ``yolo11s-seg-repvit.yaml`` resolves in this order (the scale letter after the version number
picks the scale, as for stock names):

1. a file that exists: a path always wins (Ultralytics' own rule);
2. a stock Ultralytics YAML (``yolo11s.yaml``);
3. a YAML shipped with yolo-plugins (:func:`shipped_dir`; ``yolov8s-transnext.yaml`` -> ``yolov8-transnext.yaml``);
4. a derived name ``<stock name>-<family>[_<variant>].yaml``: the stock YAML of the installed Ultralytics with its
   backbone swapped (:mod:`yolo_plugins.integration.derive`), written to :func:`cache_dir` and read from there.

The patch installs :func:`make_check_file` over Ultralytics' ``check_file``, which every YAML lookup goes through
(``YOLO(...)``, ``yolo train model=...``, ``yaml_model_load``); it only acts on names Ultralytics did not find. A
name that looks like a model but resolves nowhere gets an error listing what exists.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelNameError, PluginError
from ..paths import cache_dir, shipped_dir
from .compat import ultralytics_version

__all__ = [
    "shipped_dir",
    "shipped_models",
    "cache_dir",
    "split_derived",
    "find_plugin_model",
    "make_check_file",
    "models_help",
]

_SCALED = re.compile(r"(\d+)([nslmx])(.+)?$")  # Ultralytics' unification: yolov8x-seg.yaml -> yolov8-seg.yaml


def _unify(name: str) -> str:
    return _SCALED.sub(r"\1\3", name)


def shipped_models() -> list[str]:
    """Names of the shipped YAMLs (without scale letter), e.g. ``['yolo11-ca.yaml', ...]``."""
    d = shipped_dir()
    return sorted(p.name for p in d.glob("*.yaml")) if d.is_dir() else []


def split_derived(name: str) -> tuple[str, str] | None:
    """``"yolo11n-seg-repvit_m1_5.yaml"`` -> ``("yolo11n-seg.yaml", "repvit_m1_5")``; None if no part after a ``-``
    names a backbone family. The family part must be the last one."""
    from ..nn.backbone import backbone_families

    p = Path(name)
    if p.suffix not in (".yaml", ".yml"):
        return None
    parts = p.stem.split("-")
    families = backbone_families()
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].split("_")[0].lower() in families:
            if i != len(parts) - 1:
                raise ModelNameError(
                    f"'{name}': the backbone part '{parts[i]}' must come last: "
                    f"{'-'.join(parts[:i] + parts[i + 1 :] + parts[i : i + 1])}{p.suffix}"
                )
            return "-".join(parts[:i]) + p.suffix, parts[i]
    return None


def _write(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``folder/name`` atomically unless it already holds exactly that; fall back to a temporary
    folder where the cache is not writable."""
    for d in (folder, Path(tempfile.gettempdir()) / f"yolo-plugins-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        path = d / name
        try:
            if path.is_file() and path.read_text() == text:
                return path
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    raise ModelNameError(
        f"cannot write the derived model {name}: neither {folder} nor the temporary folder is writable"
    )


_DERIVED: dict[tuple, Path] = {}  # (stock path, mtime, backbone token, cache) -> written file, per process


def _derive_file(stock_path: str, token: str) -> Path:
    from .._version import __version__
    from .compat import load_yaml
    from .derive import derive, parse_backbone, to_yaml

    key = (stock_path, os.path.getmtime(stock_path), token, str(cache_dir()))
    if key in _DERIVED and _DERIVED[key].is_file():
        return _DERIVED[key]
    stock = load_yaml(stock_path)
    choice = parse_backbone(token)
    stock_name = Path(stock_path).name
    d = derive(stock, choice, source=f"Ultralytics' {stock_name}")
    name = f"{Path(stock_path).stem}-{choice.token}.yaml"
    text = to_yaml(d, name, f" {__version__} from ultralytics {ultralytics_version()}")
    folder = cache_dir() / "models" / f"ultralytics-{ultralytics_version()}"
    _DERIVED[key] = path = _write(folder, name, text)
    return path


def find_plugin_model(name: str, find_stock: Callable[[str], Any], strict: bool = False) -> str | None:
    """The file of a shipped or derived plugin model ``name`` (a bare file name), or None.

    Args:
        name: e.g. ``"yolov8s-transnext.yaml"`` (shipped) or ``"yolo11n-pose-repvit.yaml"`` (derived).
        find_stock: Ultralytics' own lookup of a stock YAML name: returns its path, or something false.
        strict: Raise :class:`ModelNameError` saying why when ``name`` looks like a plugin model but cannot be built
            (otherwise return None).
    """
    if not isinstance(name, (str, os.PathLike)):
        return None
    name = os.fspath(name)
    if os.sep in name or "/" in name or "://" in name:
        return None
    for candidate in (name, _unify(name)):
        path = shipped_dir() / candidate
        if path.is_file():
            return str(path)
    try:
        split = split_derived(name)
        if split is None:
            if strict and looks_like_model(name):
                raise ModelNameError(not_found(name))
            return None
        stock, token = split
        stock_path = next((p for p in (find_stock(stock), find_stock(_unify(stock))) if p), None)
        if not stock_path:
            if strict:
                raise ModelNameError(
                    f"model '{name}' not found: '{stock}' is not a stock model of ultralytics {ultralytics_version()}. "
                    + models_help()
                )
            return None
        return str(_derive_file(str(stock_path), token))
    except PluginError as e:
        if not strict:
            return None
        if isinstance(e, ModelNameError):
            raise
        raise ModelNameError(f"model '{name}': {e}") from None


def looks_like_model(name: str) -> bool:
    """Whether a missing file name is meant as a model (``yolo...``/``rtdetr...``, or a part close to a family)."""
    from ..nn.backbone import backbone_families

    stem = Path(name).stem.lower()
    if stem.startswith(("yolo", "rtdetr")):
        return True
    return any(
        difflib.get_close_matches(p.split("_")[0], list(backbone_families()), cutoff=0.7) for p in stem.split("-")
    )


def models_help() -> str:
    """What model names exist: the shipped YAMLs and the derived-name rule."""
    from ..nn.backbone import backbone_families

    fams = ", ".join(sorted(backbone_families()))
    return (
        f"yolo-plugins models: the shipped {', '.join(shipped_models())} (put the scale letter after the version: "
        f"yolov8s-repvit.yaml), and <stock name>-<family>[_<variant>].yaml for any stock Ultralytics model, family "
        f"one of {fams} (e.g. yolo11n-seg-repvit.yaml, yolo26s-transxnet_b.yaml)."
    )


def not_found(name: str) -> str:
    close = difflib.get_close_matches(_unify(name), shipped_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"model '{name}' not found: not a file, not a stock model of ultralytics {ultralytics_version()}, not a "
        f"yolo-plugins model.{hint} " + models_help()
    )


def _hard(args: tuple, kwargs: dict) -> bool:
    return bool(kwargs["hard"] if "hard" in kwargs else args[3] if len(args) > 3 else True)


def make_check_file(original: Callable) -> Callable:
    """Ultralytics' ``check_file`` that also finds plugin model names (only where the original finds nothing)."""

    def check_file(file, *args, **kwargs):
        error = None
        try:
            found = original(file, *args, **kwargs)
        except FileNotFoundError as e:
            found, error = None, e
        if found:
            return found
        if isinstance(file, (str, os.PathLike)) and str(file).endswith((".yaml", ".yml")):

            def find_stock(n: str):
                return original(n, "", True, ".", False)

            path = find_plugin_model(file, find_stock, strict=_hard(args, kwargs))
            if path:
                return path
        if error is not None:
            raise error
        return found

    check_file.__wrapped__ = original
    check_file.__doc__ = original.__doc__
    return check_file
