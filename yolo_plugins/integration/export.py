"""Export refusals: a format a plugin module cannot be exported to is refused before any converter runs.

A module declares what it cannot be exported to where it is defined, in the registry's spirit: a class attribute
``export_unsupported`` maps an Ultralytics export format (the ``format=`` argument: ``"ncnn"``, ``"coreml"``, ...;
optionally ``"<format>:<quantize>"``, e.g. ``"openvino:8"``, for one precision) to the reason, which says what to
use instead. A value may also be a function ``(module, args) -> str | None`` for a refusal that depends on the
export arguments (size, precision)::

    class MyBlock(nn.Module):
        export_unsupported = {"ncnn": "pnnx cannot convert its deformable sampling; export to onnx or openvino"}

:class:`ExporterHook` (one of :mod:`yolo_plugins.integration.patch`'s hooks) wraps ``Exporter.__call__``: before
Ultralytics copies, fuses and converts the model, every module of it is asked; the first declared refusal raises
:class:`ExportRefusedError` with one message naming the format, the module and the reason. Models without such
modules (every stock model) export exactly as before. The hook is installed when ``ultralytics.engine.exporter`` is
loaded (at once if it is, right after it loads if not; the plugin never imports it early) and ``unregister()``
restores the original ``__call__``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from ..errors import PluginError
from ..nn.layers import TORCH_EXPORT_FORMATS, exporting_with
from ..nn.registry import plugin_modules
from .methodhook import MethodHook

__all__ = [
    "ATTR",
    "ExportRefusedError",
    "ExporterHook",
    "check_exportable",
    "exporting",
    "normalise_format",
    "refusals",
]

ATTR = "export_unsupported"
MODULE = "ultralytics.engine.exporter"
# Ultralytics' own aliases (Exporter.__call__): refusals are declared under the canonical format argument
_ALIASES = {
    "tensorrt": "engine",
    "trt": "engine",
    "mlmodel": "coreml",
    "mlpackage": "coreml",
    "mlprogram": "coreml",
    "apple": "coreml",
    "ios": "coreml",
    "huawei": "ascend",
    "cann": "ascend",
    "om": "ascend",
    "vitis": "xilinx",
    "vitisai": "xilinx",
    "versal": "xilinx",
    "tflite": "litert",
    "tfjs": "litert",
}


class ExportRefusedError(PluginError):
    """A plugin module declares that it cannot be exported to the requested format (the message says why and what
    to export to instead)."""


def _known_formats() -> tuple[str, ...]:
    mod = sys.modules.get(MODULE)
    fmts = getattr(mod, "export_formats", None)
    return tuple(fmts()["Argument"][1:]) if fmts else ()


def normalise_format(fmt: str) -> str:
    """The canonical format argument Ultralytics exports to for ``fmt`` (aliases resolved; a misspelling corrected
    to the closest known format, as Ultralytics does; an unknown format returned lower-cased: Ultralytics rejects
    it with its own message)."""
    fmt = str(fmt).lower()
    fmt = _ALIASES.get(fmt, fmt)
    known = _known_formats()
    if known and fmt not in known:
        close = difflib.get_close_matches(fmt, known, n=1, cutoff=0.6)
        fmt = close[0] if close else fmt
    return fmt


def _quantize_key(args: Any) -> str | None:
    q = getattr(args, "quantize", None)
    return None if q is None else str(q)


def refusals(model: nn.Module, fmt: str, args: Any = None) -> list[tuple[str, str]]:
    """``(module class name, reason)`` for every kind of module in ``model`` that refuses ``fmt`` (canonical format
    argument) with these export ``args`` (anything with a ``quantize`` attribute, or None)."""
    keys = [fmt] if _quantize_key(args) is None else [f"{fmt}:{_quantize_key(args)}", fmt]
    out: dict[str, str] = {}
    for m in model.modules():
        table = getattr(m, ATTR, None)
        if not table:
            continue
        name = type(m).__name__
        for key in keys:
            reason = table.get(key)
            if callable(reason):
                reason = reason(m, args)
            if reason and name not in out:
                out[name] = str(reason)
                break
    return list(out.items())


def check_exportable(model: nn.Module, fmt: str, args: Any = None) -> None:
    """Raise :class:`ExportRefusedError` if a module of ``model`` refuses ``fmt`` (any alias) with ``args``."""
    canonical = normalise_format(fmt)
    found = refusals(model, canonical, args)
    if not found:
        return
    q = _quantize_key(args)
    what = f"format='{canonical}'" + (f" with quantize={q}" if q is not None else "")
    reasons = "; ".join(f"{name}: {reason}" for name, reason in found)
    raise ExportRefusedError(f"yolo-plugins cannot export this model to {what}. {reasons}")


MNN_LOGGER = "MNN.tools.utils.log"


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True


@contextlib.contextmanager
def _mnn_installs_nothing(model: Any, args: Any) -> Iterator[None]:
    """While a model with plugin modules is exported to MNN: MNN's converter (``MNN.tools.mnnconvert``) imports a
    telemetry logger that, when ``aliyun-log-python-sdk`` is missing, runs ``pip install -U aliyun-log-python-sdk``
    in the user's Python (that package pins ``protobuf<6``, which breaks ``onnx``). Only then (the package missing,
    the logger not yet imported) the logger's import fails instead, which ``mnnconvert`` tolerates: it converts and
    logs nothing. Stock models and installs that have the package are left alone."""
    block = (
        normalise_format(str(getattr(args, "format", ""))) == "mnn"
        and isinstance(model, nn.Module)
        and MNN_LOGGER not in sys.modules
        and _missing("aliyun.log")
        and plugin_modules(model)
    )
    if block:
        sys.modules[MNN_LOGGER] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        if block and MNN_LOGGER in sys.modules and sys.modules[MNN_LOGGER] is None:
            del sys.modules[MNN_LOGGER]


@contextlib.contextmanager
def exporting(model: Any, args: Any) -> Iterator[None]:
    """What the hook does around one export of ``model`` with the exporter's ``args``: refuse what a plugin module
    cannot be exported to, hand the arguments to graph paths (:func:`~yolo_plugins.nn.layers.exporting_with`), and
    keep MNN's converter from installing packages (:func:`_mnn_installs_nothing`)."""
    if isinstance(model, nn.Module):
        check_exportable(model, getattr(args, "format", ""), args)
    with exporting_with(args), _mnn_installs_nothing(model, args):
        yield


def make_call(original: Callable) -> Callable:
    """``Exporter.__call__`` inside :func:`exporting` (refusals first, see :func:`check_exportable`)."""

    def __call__(self, model=None, *args, **kwargs):
        with exporting(model if model is not None else kwargs.get("model"), self.args):
            return original(self, model, *args, **kwargs)

    return __call__


class ExporterHook(MethodHook):
    """The ``Exporter.__call__`` replacement (required: a release whose exporter has no ``Exporter.__call__`` taking
    the model is reported as incompatible).

    When the plugin registers while the exporter module is itself loading (a process whose first import is the
    exporter), the ``on_export_start`` default callback, which every exporter runs before converting, patches for the
    next exports, checks the model being exported now and hands its arguments to graph paths until its
    ``on_export_end``.
    """

    what, required = "Exporter.__call__ (export refusals)", True
    MODULE, CLASS, METHOD, EVENT = MODULE, "Exporter", "__call__", "on_export_start"

    def replacement(self, original: Callable) -> Callable:
        return make_call(original)

    def problems(self) -> list[str]:
        cls = self.owner()
        if cls is None:
            return []  # checked when it loads
        code = getattr(vars(cls).get("__call__"), "__code__", None)
        if code is None or "model" not in code.co_varnames[: code.co_argcount]:
            return ["ultralytics.engine.exporter.Exporter.__call__(self, model) is missing"]
        return []

    def on_event(self, exporter) -> None:
        self.patch()
        # this export runs unwrapped: what exporting() does is entered here and left at its on_export_end (an export
        # that fails leaves it entered until the next export, which enters its own)
        marked = exporting(exporter.model, exporter.args)
        marked.__enter__()
        exporter.add_callback("on_export_end", lambda _: marked.__exit__(None, None, None))
        model, im = exporter.model, getattr(exporter, "im", None)
        fmt = normalise_format(str(getattr(exporter.args, "format", "")))
        if fmt in TORCH_EXPORT_FORMATS and isinstance(model, nn.Module) and im is not None and plugin_modules(model):
            model(im)  # the exporter's dry run came before this callback: again, to record export_constant values
