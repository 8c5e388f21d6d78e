"""The parser hook: plugin rows in Ultralytics' ``parse_model`` without copying it.

Two pieces, installed and removed together by :mod:`yolo_plugins.integration.patch`:

1. **Names.** :class:`ModuleNames` places each registered module in ``ultralytics.nn.tasks``' namespace under its
   YAML name as a small builder class, so ``parse_model``'s own ``globals()[name]`` lookup finds it. It subscribes to
   the registry, so modules registered later become nameable too.
2. **Rows.** :func:`make_parse_model` wraps ``parse_model``. Every YAML's module names are checked first (an unknown
   name is a :class:`UnknownModuleError` naming the row and the closest stock and plugin names, never a bare
   ``KeyError``). A YAML that names no plugin module then goes to the original untouched. For one that does, the
   wrapper hands ``parse_model`` its rows as a stream: ``d["backbone"] + d["head"]`` yields them one at a time. When
   parse_model asks for row ``i``, the stream reads parse_model's channel list ``ch`` and scales from its frame,
   corrects the output channels recorded for row ``i - 1`` if that was a plugin row (parse_model records ``c2 = c1``
   for every module it does not know), and resolves row ``i`` when it is a plugin row: ``c1`` from ``ch``, arguments
   by the module's channel rule (:mod:`yolo_plugins.nn.registry`), the module built with row-aware errors. The builder
   class then hands parse_model the prebuilt module. Stock rows pass through untouched.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import (
    IncompatibleUltralyticsError,
    PluginError,
    UnknownModuleError,
    YAMLError,
)
from ..nn.registry import REGISTRY, Entry
from .compat import tasks, ultralytics_version

__all__ = [
    "PARSE_MODEL_LOCALS",
    "ModuleNames",
    "make_parse_model",
    "check_module_names",
    "FeatureChannels",
    "RowRecord",
    "recording",
]

# parse_model's locals the row stream reads between rows
PARSE_MODEL_LOCALS = ("ch", "width", "max_channels", "depth", "scale", "scales", "args", "layers", "nc", "n_")
_LOCK = threading.RLock()
_LOCAL = threading.local()  # .records: list[RowRecord] while a `recording()` block is active


# ----------------------------------------------------------------------------------------------------------- names
class _Built:
    """Prebuilt module instance(s) of one plugin row, handed to parse_model in place of its arguments."""

    def __init__(self, modules: list[nn.Module], shown: list[Any]):
        self.modules, self.shown = modules, shown

    def take(self) -> nn.Module:
        if not self.modules:
            raise IncompatibleUltralyticsError(
                f"ultralytics {ultralytics_version()} built a plugin row more often than its repeat count; "
                "yolo-plugins does "
                "not support this release"
            )
        return self.modules.pop(0)

    def __repr__(self) -> str:  # parse_model prints `[built]` in its layer table: show the resolved arguments
        return ", ".join(repr(a) for a in self.shown)


def _builder(entry: Entry) -> type:
    """A stand-in class for tasks' namespace: called by parse_model with a ``_Built``, it returns the module."""

    def __new__(cls, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], _Built) and not kwargs:
            return args[0].take()
        raise IncompatibleUltralyticsError(
            f"'{entry.name}' was constructed by ultralytics {ultralytics_version()} without yolo-plugins' row "
            "resolution "
            f"(args {args}); this Ultralytics release builds models in a way yolo-plugins does not support"
        )

    ns = {"__new__": __new__, "__module__": entry.cls.__module__, "__qualname__": entry.cls.__qualname__}
    ns["__doc__"] = entry.cls.__doc__
    return type(entry.cls.__name__, (nn.Module,), ns)


class ModuleNames:
    """Registry entries as names in ``ultralytics.nn.tasks`` (a registry listener while installed)."""

    def __init__(self):
        self.injected: dict[str, type] = {}  # YAML name -> builder class placed in tasks' namespace

    def clashes(self) -> list[str]:
        """Registered names that Ultralytics itself defines (checked before anything is installed)."""
        ns = vars(tasks())
        return [n for n in REGISTRY if n in ns and ns[n] is not self.injected.get(n)]

    def added(self, entry: Entry) -> None:
        """Make ``entry`` nameable in YAMLs; refuse a name Ultralytics already defines."""
        t = tasks()
        with _LOCK:
            current = t.__dict__.get(entry.name)
            if current is not None and current is not self.injected.get(entry.name):
                raise PluginError(
                    f"cannot register '{entry.name}': Ultralytics already defines '{entry.name}' "
                    f"({getattr(current, '__module__', '?')}). Register it under another name: "
                    f"register_module(cls, name='My{entry.name}')"
                )
            self.injected[entry.name] = _builder(entry)
            setattr(t, entry.name, self.injected[entry.name])

    def removed(self, entry: Entry) -> None:
        """Remove ``entry``'s name from tasks' namespace."""
        t = tasks()
        with _LOCK:
            b = self.injected.pop(entry.name, None)
            if b is not None and t.__dict__.get(entry.name) is b:
                delattr(t, entry.name)

    def install(self) -> None:
        for entry in list(REGISTRY.values()):
            self.added(entry)

    def uninstall(self) -> None:
        t = tasks()
        with _LOCK:
            for name, b in list(self.injected.items()):
                if t.__dict__.get(name) is b:
                    delattr(t, name)
            self.injected.clear()


# ------------------------------------------------------------------------------------------------------------- rows
class FeatureChannels(int):
    """Channel record of a backbone row: ``int`` value = last feature's channels; ``.channels`` lists them all."""

    def __new__(cls, channels: list[int]):
        obj = super().__new__(cls, channels[-1])
        obj.channels = list(channels)
        return obj

    def __repr__(self) -> str:
        return repr(self.channels)


@dataclass
class RowRecord:
    """One built YAML row as the parser resolved it (what ``yolo-plugins shapes`` prints)."""

    index: int
    source: Any
    n: int
    module: str
    args: str
    channels: Any  # int, or list[int] for a backbone
    plugin: bool = False


@contextlib.contextmanager
def recording():
    """Collect a :class:`RowRecord` per row for every model parsed inside the block (this thread)."""
    prev = getattr(_LOCAL, "records", None)
    _LOCAL.records = records = []
    try:
        yield records
    finally:
        _LOCAL.records = prev


def _absolute(f: int, i: int) -> int:
    """Absolute row index of a 'from' value at row ``i`` (negative values count back from ``i``)."""
    return f if f >= 0 else i + f


def _row_label(i: int, m: Any) -> str:
    return f"row {i} ({m})"


def _literal(a: Any, nc: Any) -> Any:
    """Resolve a string YAML argument like parse_model does (``nc`` or a Python literal); other strings stay."""
    if not isinstance(a, str):
        return a
    if a == "nc":
        return nc
    with contextlib.suppress(ValueError, SyntaxError):
        return ast.literal_eval(a)
    return a


def _stock_names() -> list[str]:
    ns = vars(tasks())
    return [k for k, v in ns.items() if isinstance(v, type) and issubclass(v, nn.Module) and k not in REGISTRY]


def _closest(name: str, known: list[str], n: int = 3) -> list[str]:
    """Closest names, ignoring case (``C2F`` -> ``C2f`` before ``C2``)."""
    lower = {}
    for k in known:
        lower.setdefault(k.lower(), k)
    return [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)]


def _unknown(i: int, m: str, kind: str, known: list[str]) -> UnknownModuleError:
    close = _closest(m.split(".")[-1], known, n=4)
    return UnknownModuleError(
        f"{_row_label(i, m)}: unknown module '{m}'{kind}." + (f" Did you mean {close}?" if close else "")
    )


def check_module_names(rows: list) -> None:
    """Raise :class:`UnknownModuleError` for the first row whose module name neither Ultralytics nor the registry
    knows, with the row, the name and the closest stock and plugin names (``nn.X`` against ``torch.nn``)."""
    ns = vars(tasks())
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise YAMLError(f"row {i}: expected [from, repeats, module, args], got {row!r}")
        m = row[2]
        if not isinstance(m, str):
            raise YAMLError(f"row {i}: the module must be a name, got {m!r}")
        if m.startswith("nn."):
            import torch

            if not isinstance(getattr(torch.nn, m[3:], None), type):
                raise _unknown(
                    i, m, " (not in torch.nn)", [k for k, v in vars(torch.nn).items() if isinstance(v, type)]
                )
        elif m.startswith("torchvision.ops."):
            continue  # Ultralytics imports torchvision for these; its own error is clear
        elif m not in ns and m not in REGISTRY:
            stock, plugin = _stock_names(), sorted(REGISTRY)
            close_stock, close_plugin = _closest(m, stock), _closest(m, plugin)
            hints = []
            if close_stock:
                hints.append(f"closest Ultralytics modules: {', '.join(close_stock)}")
            if close_plugin:
                hints.append(f"closest yolo-plugins modules: {', '.join(close_plugin)}")
            hint = "; ".join(hints) + ". " if hints else ""
            hint = hint[:1].upper() + hint[1:]
            raise UnknownModuleError(
                f"{_row_label(i, m)}: unknown module '{m}'. {hint}Plugin modules: {', '.join(plugin)} "
                "(`yolo-plugins list` describes them); modules of the installed Ultralytics are those of "
                "ultralytics.nn.modules."
            )


@dataclass
class _Stream:
    """Per-parse state of the row stream."""

    rows: list
    original: Callable = None  # the parse_model being streamed (its frame is read between rows)
    plugin_c2: dict[int, Any] = field(default_factory=dict)  # row index -> true output channels
    backbones: dict[int, str] = field(default_factory=dict)  # row index -> description of the backbone row
    plugin_n: dict[int, int] = field(default_factory=dict)  # row index -> depth-scaled repeats
    records: list | None = None

    def __iter__(self):
        frame = None
        for i, row in enumerate(self.rows):
            if frame is None:
                frame = sys._getframe(1)
                if frame.f_code is not self.original.__code__:
                    raise IncompatibleUltralyticsError(
                        f"ultralytics {ultralytics_version()} iterates YAML rows outside parse_model; "
                        "yolo-plugins does not "
                        "support this release"
                    )
            loc = frame.f_locals
            self._settle(i, loc)
            yield self._resolve(i, row, loc)
        self._settle(len(self.rows), frame.f_locals if frame is not None else {})

    # -- after parse_model recorded row i-1
    def _settle(self, i: int, loc: Mapping) -> None:
        if i == 0:
            return
        ch = loc["ch"]
        if len(ch) != i:
            raise IncompatibleUltralyticsError(
                f"ultralytics {ultralytics_version()}: parse_model's channel list has {len(ch)} entries after "
                f"{i} rows; "
                "yolo-plugins does not support this release"
            )
        if i - 1 in self.plugin_c2:
            ch[-1] = self.plugin_c2[i - 1]
        if self.records is not None:
            f, n, m, _ = self.rows[i - 1]
            layer = loc["layers"][-1]
            args = loc["args"]
            self.records.append(
                RowRecord(
                    i - 1,
                    f,
                    self.plugin_n.get(i - 1, loc.get("n_", n)),
                    getattr(layer, "type", type(layer).__name__),
                    f"[{args[0]!r}]" if len(args) == 1 and isinstance(args[0], _Built) else repr(list(args)),
                    ch[-1].channels if isinstance(ch[-1], FeatureChannels) else ch[-1],
                    plugin=i - 1 in self.plugin_c2,
                )
            )

    # -- before parse_model builds row i
    def _resolve(self, i: int, row: list, loc: Mapping) -> list:
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise YAMLError(f"row {i}: expected [from, repeats, module, args], got {row!r}")
        f, n, m, args = row
        entry = REGISTRY.get(m) if isinstance(m, str) else None
        srcs = [f] if isinstance(f, int) else list(f)
        absolute = [_absolute(s, i) for s in srcs] if i else []
        if entry is None or entry.rule != "feature":
            for s in absolute:
                if s in self.backbones:
                    raise YAMLError(
                        f"{_row_label(i, m)} takes row {s} ({self.backbones[s]}), which outputs a list of feature "
                        f"maps. Pick one with a Feature row, e.g. [{s}, 1, Feature, [{len(loc['ch'][s].channels) - 1}]]"
                    )
        if entry is None:
            return row
        args = list(args) if isinstance(args, (list, tuple)) else [args]
        return [f, 1 if entry.repeat else n, m, [self._build(i, f, n, entry, args, loc)]]

    def _build(self, i: int, f: Any, n: int, entry: Entry, args: list, loc: Mapping) -> _Built:
        ch, nc = loc["ch"], loc["nc"]
        label = _row_label(i, entry.name)
        if not isinstance(f, int):
            raise YAMLError(f"{label}: takes one input, got from={f}. Concatenate first with a Concat row.")
        if entry.rule in ("backbone", "feature") and n != 1:
            raise YAMLError(f"{label}: a {entry.rule} row is built once; set its repeats to 1 (got {n})")
        scales = loc.get("scales") or {}
        variant_map = bool(args) and isinstance(args[0], Mapping) and bool(args[0]) and set(args[0]) <= set(scales)
        kwargs = {}
        if args and isinstance(args[-1], Mapping) and not (entry.rule == "backbone" and variant_map and len(args) == 1):
            kwargs = dict(args.pop())
        args = [_literal(a, nc) for a in args]
        c1 = ch[f]
        n_eff = max(round(n * loc["depth"]), 1) if n > 1 else n  # Ultralytics' depth gain, same formula
        if entry.rule == "same":
            call, c2 = [c1, *args], c1
        elif entry.rule == "scaled":
            if not args or not isinstance(args[0], int):
                raise YAMLError(
                    f"{label}: the first argument must be the output channel count (an int, scaled by the YAML's "
                    f"width), got {args[:1]}. {entry.name} takes {entry.signature}"
                )
            from ultralytics.utils.ops import make_divisible

            c2 = make_divisible(min(args[0], loc["max_channels"]) * loc["width"], 8)
            call = [c1, c2, *args[1:]]
            if entry.repeat:
                call.insert(2, n_eff)
                n_eff = 1
        elif entry.rule == "backbone":
            if variant_map:  # {scale: variant}
                scale = loc["scale"]
                if scale not in args[0]:
                    raise YAMLError(
                        f"{label}: the variant map {dict(args[0])} has no entry for scale '{scale}'. Add one, or "
                        "name a single variant."
                    )
                args[0] = args[0][scale]
            call, c2 = args, None
        else:  # feature
            src = _absolute(f, i)
            if i == 0 or src not in self.backbones:
                raise YAMLError(f"{label}: 'from' must point at a backbone row (one that outputs a feature list)")
            k = args[0] if args else 0
            chans = c1.channels
            if not isinstance(k, int) or not -len(chans) <= k < len(chans):
                raise YAMLError(
                    f"{label}: feature index {k} does not exist; the backbone at row {src} ({self.backbones[src]}) "
                    f"has {len(chans)} features (indices 0..{len(chans) - 1}, channels {chans}, strides "
                    f"{loc['layers'][src].strides})."
                )
            call, c2 = [k], chans[k]
        self.plugin_n[i] = n_eff if not entry.repeat else call[2]
        modules = [self._construct(label, entry, call, kwargs) for _ in range(n_eff)]
        if entry.rule == "backbone":
            bb = modules[0]
            c2 = FeatureChannels(bb.channels)
            self.backbones[i] = f"{entry.name} {getattr(bb, 'variant', '')}".strip()
        self.plugin_c2[i] = c2
        shown = [*call, *([kwargs] if kwargs else [])]
        return _Built(modules, shown)

    @staticmethod
    def _construct(label: str, entry: Entry, call: list, kwargs: dict) -> nn.Module:
        kwargs = dict(kwargs)
        lr_scale = kwargs.pop("lr_scale", None)  # any plugin row: its learning-rate multiple (integration.optim)
        if lr_scale is not None and not (isinstance(lr_scale, (int, float)) and lr_scale >= 0):
            raise YAMLError(
                f"{label}: lr_scale must be a number >= 0 (a multiple of the learning rate), got {lr_scale!r}"
            )
        module = _Stream._make(label, entry, call, kwargs)
        if lr_scale is not None:
            module.lr_scale = float(lr_scale)
        return module

    @staticmethod
    def _make(label: str, entry: Entry, call: list, kwargs: dict) -> nn.Module:
        try:
            inspect.signature(entry.cls).bind(*call, **kwargs)
        except TypeError as e:
            filled = {
                "same": " (c1 is filled in from the input row)",
                "scaled": " (c1 and the scaled c2 are filled in; the YAML gives c2 first)",
                "feature": "",
                "backbone": "",
            }[entry.rule]
            raise YAMLError(
                f"{label}: bad arguments {call}{' ' + str(kwargs) if kwargs else ''}: {e}. {entry.name} takes "
                f"{entry.signature}{filled}."
            ) from None
        try:
            return entry.cls(*call, **kwargs)
        except PluginError as e:
            raise type(e)(f"{label}: {e}") from None
        except (TypeError, ValueError, RuntimeError, AssertionError) as e:
            raise YAMLError(
                f"{label}: {entry.name}{tuple(call)} failed: {type(e).__name__}: {e}. {entry.name} takes "
                f"{entry.signature}."
            ) from None


class _Rows(list):
    """Stands in for ``d["backbone"]``: ``rows + head`` returns the resolving stream."""

    stream: _Stream

    def __add__(self, other):
        self.stream.rows = list(self) + list(other)
        return self.stream


def _names_plugin(rows: list) -> bool:
    return any(isinstance(r, (list, tuple)) and len(r) == 4 and r[2] in REGISTRY for r in rows)


def make_parse_model(original: Callable) -> Callable:
    """Ultralytics' ``parse_model`` with module names checked and plugin rows resolved (see module docstring)."""

    def parse_model(d, ch, verbose=True):
        records = getattr(_LOCAL, "records", None)
        if not isinstance(d, dict):
            return original(d, ch, verbose)
        for key in ("backbone", "head"):
            if not isinstance(d.get(key), list):
                raise YAMLError(f"model YAML: '{key}' must be a list of [from, repeats, module, args] rows")
        rows = d["backbone"] + d["head"]
        check_module_names(rows)
        if records is None and not _names_plugin(rows):
            return original(d, ch, verbose)
        stream_rows = _Rows(d["backbone"])
        stream_rows.stream = _Stream(rows=[], original=original, records=records)
        return original({**d, "backbone": stream_rows}, ch, verbose)

    parse_model.__wrapped__ = original
    parse_model.__doc__ = original.__doc__
    return parse_model
