"""Hook the registry into Ultralytics' YAML parser without copying it.

``register()`` does four reversible things (``unregister()`` undoes each, restoring the original objects):

1. **Names.** Each registered module is placed in ``ultralytics.nn.tasks``' namespace under its YAML name as a small
   builder class, so ``parse_model``'s own ``globals()[name]`` lookup finds it.
2. **Rows.** ``tasks.parse_model`` is wrapped. A YAML that names no plugin module goes straight to the original. For
   one that does, the wrapper hands ``parse_model`` its rows as a stream: ``d["backbone"] + d["head"]`` yields them one
   at a time. When parse_model asks for row ``i``, the stream reads parse_model's channel list ``ch`` and scales from
   its frame, corrects the output channels recorded for row ``i - 1`` if that was a plugin row (parse_model records
   ``c2 = c1`` for every module it does not know), and resolves row ``i`` when it is a plugin row: ``c1`` from ``ch``,
   arguments by the module's channel rule (:mod:`yolo_plugins.registry`), the module built with row-aware errors. The
   builder class then hands parse_model the prebuilt module. Stock rows pass through untouched.
3. **Init.** ``tasks.initialize_weights`` (which sets BatchNorm ``eps=1e-3``/``momentum=0.03`` and ``inplace=True`` on
   every activation) is wrapped to restore those attributes inside plugin modules afterwards, so a backbone computes
   exactly what its official checkpoint expects. Stock layers are treated as before.
4. **Fuse.** ``BaseModel.fuse`` is wrapped to also re-parameterise every :class:`~yolo_plugins.layers.Fusable`.

The internals relied on are checked before anything is touched; a mismatch raises one
:class:`~yolo_plugins.errors.IncompatibleUltralyticsError` naming the installed version.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .errors import IncompatibleUltralyticsError, PluginError, YAMLError
from .registry import REGISTRY, Entry

__all__ = ["register", "unregister", "is_registered", "RowRecord", "recording"]

_ORIGINALS: dict[str, Any] = {}  # name -> original object, filled by register()
_INJECTED: dict[str, type] = {}  # YAML name -> builder class placed in tasks' namespace
_LOCK = threading.RLock()
_LOCAL = threading.local()  # .records: list[RowRecord] while a `recording()` block is active
_FRAME_LOCALS = ("ch", "width", "max_channels", "depth", "scale", "scales", "args", "layers", "nc", "n_")


def _tasks():
    import ultralytics.nn.tasks as tasks

    return tasks


def _version() -> str:
    import ultralytics

    return getattr(ultralytics, "__version__", "unknown")


def _check_internals() -> None:
    """Fail with one clear message if the parser internals this patch relies on are missing."""
    tasks = _tasks()
    problems = []
    pm = getattr(tasks, "parse_model", None)
    code = getattr(pm, "__code__", None)
    if code is None:
        problems.append("tasks.parse_model is missing")
    else:
        missing = [v for v in _FRAME_LOCALS if v not in code.co_varnames + code.co_cellvars]
        if missing:
            problems.append(f"parse_model has no local(s) {missing}")
        if "globals" not in code.co_names:
            problems.append("parse_model no longer looks modules up in globals()")
    if not callable(getattr(getattr(tasks, "BaseModel", None), "fuse", None)):
        problems.append("BaseModel.fuse is missing")
    if not callable(getattr(tasks, "initialize_weights", None)):
        problems.append("tasks.initialize_weights is missing")
    if problems:
        raise IncompatibleUltralyticsError(
            f"yolo-plugins cannot hook into ultralytics {_version()}: {'; '.join(problems)}. "
            "Install a supported release (pip install 'ultralytics>=8.3.100,<9') or report this version."
        )


# ----------------------------------------------------------------------------------------------------------- names
class _Built:
    """Prebuilt module instance(s) of one plugin row, handed to parse_model in place of its arguments."""

    def __init__(self, modules: list[nn.Module], shown: list[Any]):
        self.modules, self.shown = modules, shown

    def take(self) -> nn.Module:
        if not self.modules:
            raise IncompatibleUltralyticsError(
                f"ultralytics {_version()} built a plugin row more often than its repeat count; yolo-plugins does "
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
            f"'{entry.name}' was constructed by ultralytics {_version()} without yolo-plugins' row resolution "
            f"(args {args}); this Ultralytics release builds models in a way yolo-plugins does not support"
        )

    ns = {"__new__": __new__, "__module__": entry.cls.__module__, "__qualname__": entry.cls.__qualname__}
    ns["__doc__"] = entry.cls.__doc__
    return type(entry.cls.__name__, (nn.Module,), ns)


def inject(entry: Entry) -> None:
    """Make ``entry`` nameable in YAMLs (called by register() and by register_module while registered)."""
    tasks = _tasks()
    with _LOCK:
        current = tasks.__dict__.get(entry.name)
        if current is not None and current is not _INJECTED.get(entry.name):
            raise PluginError(
                f"cannot register '{entry.name}': Ultralytics already defines '{entry.name}' "
                f"({getattr(current, '__module__', '?')}). Register it under another name: "
                f"register_module(cls, name='My{entry.name}')"
            )
        _INJECTED[entry.name] = _builder(entry)
        setattr(tasks, entry.name, _INJECTED[entry.name])
        if _ORIGINALS:  # registered: allow-list its classes for restricted loading too
            _allow_listed(True)


def eject(entry: Entry) -> None:
    """Remove ``entry``'s name from tasks' namespace."""
    tasks = _tasks()
    with _LOCK:
        b = _INJECTED.pop(entry.name, None)
        if b is not None and tasks.__dict__.get(entry.name) is b:
            delattr(tasks, entry.name)


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
    tasks = _tasks()
    return [k for k, v in vars(tasks).items() if isinstance(v, type) and issubclass(v, nn.Module)]


def _check_name(i: int, m: Any) -> None:
    """Unknown module names get the row, the name and the closest known names."""
    if not isinstance(m, str) or m.startswith(("nn.", "torchvision.ops.")) or m in vars(_tasks()):
        return
    known = sorted(set(_stock_names()) | set(REGISTRY))
    close = difflib.get_close_matches(m, known, n=3, cutoff=0.5)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise YAMLError(
        f"{_row_label(i, m)}: unknown module '{m}'.{hint} Plugin modules: {', '.join(sorted(REGISTRY))} "
        "(`yolo-plugins list` describes them)."
    )


@dataclass
class _Stream:
    """Per-parse state of the row stream."""

    rows: list
    plugin_c2: dict[int, Any] = field(default_factory=dict)  # row index -> true output channels
    backbones: dict[int, str] = field(default_factory=dict)  # row index -> description of the backbone row
    plugin_n: dict[int, int] = field(default_factory=dict)  # row index -> depth-scaled repeats
    records: list | None = None

    def __iter__(self):
        frame = None
        for i, row in enumerate(self.rows):
            if frame is None:
                frame = sys._getframe(1)
                if frame.f_code is not _ORIGINALS["parse_model"].__code__:
                    raise IncompatibleUltralyticsError(
                        f"ultralytics {_version()} iterates YAML rows outside parse_model; yolo-plugins does not "
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
                f"ultralytics {_version()}: parse_model's channel list has {len(ch)} entries after {i} rows; "
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
        _check_name(i, m)
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


def _names_plugin(d: Mapping) -> bool:
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    return any(isinstance(r, (list, tuple)) and len(r) == 4 and r[2] in REGISTRY for r in rows)


def _parse_model(d, ch, verbose=True):
    """Ultralytics' parse_model, with plugin rows resolved by the registry (see module docstring)."""
    original = _ORIGINALS["parse_model"]
    records = getattr(_LOCAL, "records", None)
    if not isinstance(d, dict) or not (records is not None or _names_plugin(d)):
        return original(d, ch, verbose)
    for key in ("backbone", "head"):
        if not isinstance(d.get(key), list):
            raise YAMLError(f"model YAML: '{key}' must be a list of [from, repeats, module, args] rows")
    rows = _Rows(d["backbone"])
    rows.stream = _Stream(rows=[], records=records)
    d = {**d, "backbone": rows}
    return original(d, ch, verbose)


# ------------------------------------------------------------------------------------------------- init and fuse
_RESTORED_ATTRS = ("eps", "momentum", "inplace")


def _plugin_modules(model: nn.Module):
    plugin_classes = tuple(e.cls for e in REGISTRY.values())
    return [m for m in model.modules() if isinstance(m, plugin_classes)]


def _initialize_weights(model, *args, **kwargs):
    """Ultralytics' initialize_weights for stock layers; plugin modules keep their own BN/activation settings."""
    saved = [
        (m, a, getattr(m, a))
        for p in _plugin_modules(model)
        for m in p.modules()
        for a in _RESTORED_ATTRS
        if a in vars(m)
    ]
    out = _ORIGINALS["initialize_weights"](model, *args, **kwargs)
    for m, a, v in saved:
        setattr(m, a, v)
    return out


def _fuse(self, *args, **kwargs):
    """BaseModel.fuse, plus ``fuse()`` of every plugin Fusable (children before parents)."""
    from .layers import Fusable

    for m in reversed(list(self.modules())):
        if isinstance(m, Fusable):
            m.fuse()
    return _ORIGINALS["fuse"](self, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ (un)registration
def _safe_globals() -> dict[str, type]:
    """Classes a pickled plugin model references: every nn.Module subclass defined in a module that defines a
    registered class (plugin families, user modules) and the small data classes such modules list in
    ``__safe_globals__`` (feature info, never-pickled caches). Keyed like Ultralytics' allow-list: "module.Name"."""
    out = {}
    for mod_name in {e.cls.__module__ for e in REGISTRY.values()} | {"yolo_plugins.backbone"}:
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        extra = tuple(getattr(mod, "__safe_globals__", ()))
        for obj in vars(mod).values():
            if isinstance(obj, type) and obj.__module__ == mod_name and (issubclass(obj, nn.Module) or obj in extra):
                out[f"{mod_name}.{obj.__qualname__}"] = obj
    return out


def _safe_load_class():
    """Ultralytics' restricted-loading allow-list holder (``ULTRALYTICS_SAFE_LOAD=1``), or None on releases without it."""
    cls = getattr(_tasks(), "_SafeLoad", None)
    return cls if isinstance(getattr(cls, "__dict__", {}).get("_build"), classmethod) else None


def _safe_build(cls):
    registry = _ORIGINALS["safe_build"].__func__(cls)
    registry.update(_safe_globals())
    return registry


def _allow_listed(on: bool) -> None:
    """Add (or remove) the plugin classes to the allow-list of Ultralytics' restricted checkpoint loading."""
    safe = _safe_load_class()
    if safe is None:
        return
    if safe._registry is not None:  # already built in this process: update it in place
        with safe._lock:
            for name, obj in _safe_globals().items():
                if on:
                    safe._registry[name] = obj
                else:
                    safe._registry.pop(name, None)


def is_registered() -> bool:
    """Whether the patch is active."""
    return bool(_ORIGINALS)


def register() -> None:
    """Activate the patch (idempotent). Raises IncompatibleUltralyticsError on an unsupported Ultralytics."""
    with _LOCK:
        if _ORIGINALS:
            return
        _check_internals()
        tasks = _tasks()
        originals = {
            "parse_model": tasks.parse_model,
            "initialize_weights": tasks.initialize_weights,
            "fuse": tasks.BaseModel.__dict__["fuse"],
        }
        for entry in REGISTRY.values():  # fail before touching anything if a name clashes
            if entry.name in vars(tasks):
                inject(entry)  # raises the clash error
        _ORIGINALS.update(originals)
        tasks.parse_model = _parse_model
        tasks.initialize_weights = _initialize_weights
        tasks.BaseModel.fuse = _fuse
        safe = _safe_load_class()
        if safe is not None:
            _ORIGINALS["safe_build"] = safe.__dict__["_build"]
            safe._build = classmethod(_safe_build)
        for entry in REGISTRY.values():
            inject(entry)  # also allow-lists its classes for restricted loading


def unregister() -> None:
    """Restore Ultralytics exactly as it was before :func:`register` (idempotent)."""
    with _LOCK:
        if not _ORIGINALS:
            return
        tasks = _tasks()
        for entry in list(REGISTRY.values()):
            eject(entry)
        tasks.parse_model = _ORIGINALS.pop("parse_model")
        tasks.initialize_weights = _ORIGINALS.pop("initialize_weights")
        tasks.BaseModel.fuse = _ORIGINALS.pop("fuse")
        _allow_listed(False)
        if "safe_build" in _ORIGINALS:
            _safe_load_class()._build = _ORIGINALS.pop("safe_build")
        _ORIGINALS.clear()
