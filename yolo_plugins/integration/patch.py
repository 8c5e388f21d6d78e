"""``register()`` / ``unregister()``: the reversible changes yolo-plugins makes to Ultralytics, all or nothing.

:func:`_hooks` lists them; each replaces one Ultralytics object and keeps the original:

* ``tasks.parse_model``: module names checked, plugin rows resolved (:mod:`yolo_plugins.integration.parser`);
  the registered modules' names placed in ``tasks``' namespace (:class:`~yolo_plugins.integration.parser.ModuleNames`).
* ``tasks.initialize_weights``: stock layers as before; plugin modules keep their own BatchNorm ``eps``/``momentum``
  (Ultralytics sets 1e-3/0.03, which would break official checkpoints) and activation settings.
* ``BaseModel.fuse``: also re-parameterises every :class:`~yolo_plugins.nn.layers.Fusable` plugin module.
* ``checks.check_file``: a model name Ultralytics does not find is looked up among the shipped and derivable plugin
  models (:mod:`yolo_plugins.integration.names`).
* ``BaseTrainer.build_optimizer``: parameters of plugin modules with an ``lr_scale`` get that multiple of the learning
  rate (:mod:`yolo_plugins.integration.optim`).
* ``Exporter.__call__``: a format a plugin module declares it cannot be exported to (``export_unsupported``) is
  refused with one message before any converter runs (:mod:`yolo_plugins.integration.export`).
* ``_SafeLoad`` (optional, releases with restricted loading): plugin classes join the allow-list while registered.

``register()`` first checks every internal these rely on; if one is missing it raises one
:class:`~yolo_plugins.errors.IncompatibleUltralyticsError` naming the version and what is missing, having touched
nothing. If installing fails half-way, everything installed so far is restored before the error is raised.
``unregister()`` restores every original object.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .._legacy import aliases
from ..errors import IncompatibleUltralyticsError, PluginError
from ..nn import layers
from ..nn.backbone import Backbone
from ..nn.registry import REGISTRY, Entry, plugin_modules, subscribe, unsubscribe
from . import names, parser
from .compat import (
    SUPPORTED_ULTRALYTICS,
    in_supported_range,
    tasks,
    ultralytics_version,
)
from .export import ExporterHook
from .optim import TrainerHook

__all__ = ["register", "unregister", "is_registered", "RowRecord", "recording"]

RowRecord, recording = parser.RowRecord, parser.recording  # re-exported: yolo_plugins.integration.patch.recording
_LOCK = threading.RLock()
_ACTIVE: list[Any] = []  # installed hooks, in installation order


# ------------------------------------------------------------------------------------------- one replaced object
@dataclass
class _Replace:
    """Replace ``owner().<attr>`` by ``make(original)``; ``check(original)`` lists what the replacement would miss."""

    what: str
    owner: Callable[[], Any]
    attr: str
    make: Callable[[Any], Any]
    check: Callable[[Any], list[str]] = lambda original: []
    required: bool = True
    original: Any = field(default=None, repr=False)

    def problems(self) -> list[str]:
        try:
            owner = self.owner()
        except Exception as e:  # noqa: BLE001 - reported as what is missing
            return [f"{self.what}: {type(e).__name__}: {e}"]
        original = vars(owner).get(self.attr) if owner is not None else None
        if original is None:
            return [f"{self.what} is missing"]
        return self.check(original)

    def install(self) -> None:
        owner = self.owner()
        self.original = vars(owner)[self.attr]
        setattr(owner, self.attr, self.make(self.original))

    def uninstall(self) -> None:
        if self.original is not None:
            setattr(self.owner(), self.attr, self.original)
            self.original = None


# ----------------------------------------------------------------------------------------------------- the parser
def _check_parse_model(pm: Any) -> list[str]:
    code = getattr(pm, "__code__", None)
    if code is None:
        return ["tasks.parse_model is not a Python function"]
    problems = []
    missing = [v for v in parser.PARSE_MODEL_LOCALS if v not in code.co_varnames + code.co_cellvars]
    if missing:
        problems.append(f"parse_model has no local(s) {missing}")
    if "globals" not in code.co_names:
        problems.append("parse_model no longer looks modules up in globals()")
    return problems


class _Names:
    """The registry's names in tasks' namespace, kept in step with the registry while installed."""

    what, required = "module names in ultralytics.nn.tasks", True

    def __init__(self):
        self.names = parser.ModuleNames()

    def problems(self) -> list[str]:
        return []

    def install(self) -> None:
        self.names.install()
        subscribe(self.names)

    def uninstall(self) -> None:
        unsubscribe(self.names)
        self.names.uninstall()


# ------------------------------------------------------------------------------------------------- init and fuse
_RESTORED_ATTRS = ("eps", "momentum", "inplace")


def _make_initialize_weights(original: Callable) -> Callable:
    def initialize_weights(model, *args, **kwargs):
        """Ultralytics' initialize_weights for stock layers; plugin modules keep their own BN/activation settings."""
        saved = [
            (m, a, getattr(m, a))
            for p in plugin_modules(model)
            for m in p.modules()
            for a in _RESTORED_ATTRS
            if a in vars(m)
        ]
        out = original(model, *args, **kwargs)
        for m, a, v in saved:
            setattr(m, a, v)
        return out

    return initialize_weights


def _make_fuse(original: Callable) -> Callable:
    def fuse(self, *args, **kwargs):
        """BaseModel.fuse, plus ``fuse()`` of every plugin Fusable (children before parents)."""
        from ..nn.layers import Fusable

        for m in reversed(list(self.modules())):
            if isinstance(m, Fusable):
                m.fuse()
        return original(self, *args, **kwargs)

    fuse.__wrapped__ = original
    return fuse


# -------------------------------------------------------------------------------------------- restricted loading
def _safe_globals(import_packages: bool = False) -> dict[str, type]:
    """Classes a pickled plugin model references, keyed like Ultralytics' allow-list ("module.Name"): every nn.Module
    subclass defined in a module that defines a registered class (plugin families, user modules) or in the shared
    layers (``nn.layers``: LayerNorm, DropPath, ...) and the small data
    classes such modules list in ``__safe_globals__`` (feature info, never-pickled caches). A module may also name
    third-party packages in ``__safe_packages__`` (the Timm row: ``timm``) and their data classes in
    ``__safe_package_data__``: their nn.Modules and enums join too, from the package's modules already imported, or,
    with ``import_packages``, after importing the package where it is installed."""
    out = {}
    packages, package_data = set(), set()
    for mod_name in {e.cls.__module__ for e in REGISTRY.values()} | {Backbone.__module__, layers.__name__}:
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        extra = tuple(getattr(mod, "__safe_globals__", ()))
        packages.update(getattr(mod, "__safe_packages__", ()))
        package_data.update(getattr(mod, "__safe_package_data__", ()))
        for obj in vars(mod).values():
            if isinstance(obj, type) and obj.__module__ == mod_name and (issubclass(obj, nn.Module) or obj in extra):
                for name in (mod_name, *aliases(mod_name)):  # 0.1.0 checkpoints name the old module paths
                    out[f"{name}.{obj.__qualname__}"] = obj
    for package in sorted(packages):
        if import_packages and package not in sys.modules and importlib.util.find_spec(package) is not None:
            importlib.import_module(package)
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not (mod_name == package or mod_name.startswith(package + ".")):
                continue
            for obj in list(vars(mod).values()):
                if not (isinstance(obj, type) and obj.__module__ == mod_name):
                    continue
                key = f"{mod_name}.{obj.__qualname__}"
                if issubclass(obj, (nn.Module, enum.Enum)) or key in package_data:
                    out[key] = obj
    return out


class _AllowList:
    """Plugin classes in the allow-list of Ultralytics' restricted loading (``ULTRALYTICS_SAFE_LOAD=1``).

    Two shapes are known: ``_SafeLoad._registry`` (a dict "module.Name" -> class, 8.4.1xx) and ``_SafeLoad._globals``
    (a list of classes and ``(class, "module.Name")`` pairs, earlier 8.4 releases). ``_build()`` creates the container
    on first use; it is wrapped to include the plugin classes, and a container already built is updated in place.
    Releases without ``_SafeLoad`` have no restricted loading: nothing to do.
    """

    what, required = "the restricted-loading allow-list (tasks._SafeLoad)", False
    _CACHES = ("_registry", "_globals")

    def __init__(self):
        self.build: _Replace | None = None
        self.added_entries: dict[str, type] = {}

    @staticmethod
    def _owner():
        return getattr(tasks(), "_SafeLoad", None)

    def _cache_attr(self, owner) -> str | None:
        return next((a for a in self._CACHES if a in vars(owner)), None)

    def problems(self) -> list[str]:
        owner = self._owner()
        if owner is None:
            return []
        attr = self._cache_attr(owner)
        if not isinstance(vars(owner).get("_build"), classmethod) or attr is None:
            return ["tasks._SafeLoad has no _build() classmethod with a _registry or _globals cache"]
        if not isinstance(getattr(owner, attr), (dict, list, type(None))):
            return [f"tasks._SafeLoad.{attr} is a {type(getattr(owner, attr)).__name__}, not a dict or list"]
        return []

    @staticmethod
    def _add(container: Any, entries: dict[str, type]) -> Any:
        if isinstance(container, dict):
            container.update(entries)
        elif isinstance(container, list):
            container.extend((obj, name) for name, obj in entries.items() if (obj, name) not in container)
        return container

    @staticmethod
    def _remove(container: Any, entries: dict[str, type]) -> None:
        for name, obj in entries.items():
            if isinstance(container, dict) and container.get(name) is obj:
                del container[name]
            elif isinstance(container, list) and (obj, name) in container:
                container.remove((obj, name))

    def _container(self) -> tuple[Any, Any]:
        """(the allow-list Ultralytics has built, or None; the lock that guards it)."""
        owner = self._owner()
        lock = getattr(owner, "_lock", None) or contextlib.nullcontext()
        return getattr(owner, self._cache_attr(owner)), lock

    def _sync(self) -> None:
        """Bring a container already built in line with the registry (one not built yet gets ours in _build)."""
        container, lock = self._container()
        if container is None:
            return
        entries = _safe_globals(import_packages=True)
        with lock:
            self._remove(container, {k: v for k, v in self.added_entries.items() if entries.get(k) is not v})
            self._add(container, entries)
        self.added_entries = entries

    def install(self) -> None:
        owner = self._owner()
        if owner is None:
            return

        def make(original: classmethod) -> classmethod:
            def _build(cls):  # the first restricted load: third-party packages of plugin rows are imported now
                entries = _safe_globals(import_packages=True)
                self.added_entries.update(entries)  # what unregister() takes out again
                return self._add(original.__func__(cls), entries)

            return classmethod(_build)

        self.build = _Replace("tasks._SafeLoad._build", self._owner, "_build", make)
        self.build.install()
        self._sync()
        subscribe(self)

    def uninstall(self) -> None:
        unsubscribe(self)
        if self.build is None:
            return
        self.build.uninstall()
        container, lock = self._container()
        if container is not None:
            with lock:
                self._remove(container, self.added_entries)
        self.added_entries, self.build = {}, None

    def added(self, entry: Entry) -> None:  # registry listener
        self._sync()

    def removed(self, entry: Entry) -> None:
        self._sync()


# ------------------------------------------------------------------------------------------------ (un)registration
def _checks_module():
    import ultralytics.utils.checks as checks

    return checks


def _check_check_file(original: Any) -> list[str]:
    check_yaml = getattr(_checks_module(), "check_yaml", None)
    if "check_file" not in getattr(getattr(check_yaml, "__code__", None), "co_names", ()):
        return ["checks.check_yaml no longer finds model YAMLs through check_file"]
    return []


def _hooks() -> list[Any]:
    """Every change register() makes, in installation order (fresh objects holding no originals yet)."""
    return [
        _Replace("tasks.initialize_weights", tasks, "initialize_weights", _make_initialize_weights),
        _Replace("tasks.BaseModel.fuse", lambda: tasks().BaseModel, "fuse", _make_fuse),
        _Replace("checks.check_file", _checks_module, "check_file", names.make_check_file, _check_check_file),
        TrainerHook(),
        ExporterHook(),
        _AllowList(),
        _Replace("tasks.parse_model", tasks, "parse_model", parser.make_parse_model, _check_parse_model),
        _Names(),
    ]


def _incompatible(problems: list[str], during: str = "") -> IncompatibleUltralyticsError:
    return IncompatibleUltralyticsError(
        f"yolo-plugins cannot hook into ultralytics {ultralytics_version()}{during}: {'; '.join(problems)}. Nothing "
        f"was changed. Install a supported release (pip install 'ultralytics{SUPPORTED_ULTRALYTICS}') or report "
        "this version."
    )


def is_registered() -> bool:
    """Whether the patch is active."""
    return bool(_ACTIVE)


def register() -> None:
    """Activate every hook (idempotent), all or nothing.

    Raises:
        IncompatibleUltralyticsError: an internal is missing (nothing was touched) or installing failed (everything
            installed was restored first).
        PluginError: a registered module's name clashes with one Ultralytics defines.
    """
    with _LOCK:
        if _ACTIVE:
            return
        hooks = _hooks()
        required = [p for h in hooks if h.required for p in h.problems()]
        if required:
            raise _incompatible(required)
        for h in [h for h in hooks if not h.required]:
            optional = h.problems()
            if optional:
                hooks.remove(h)
                warnings.warn(
                    f"yolo-plugins: {h.what} is left alone on ultralytics {ultralytics_version()} "
                    f"({'; '.join(optional)}): plugin checkpoints will not load under ULTRALYTICS_SAFE_LOAD=1",
                    stacklevel=2,
                )
        clashes = [n for h in hooks if isinstance(h, _Names) for n in h.names.clashes()]
        if clashes:
            raise PluginError(
                f"cannot register {clashes}: Ultralytics already defines these names. Register them under other "
                "names: register_module(cls, name='My...')"
            )
        installed: list[Any] = []
        try:
            for h in hooks:
                h.install()
                installed.append(h)
        except BaseException as e:
            _uninstall(installed)
            if isinstance(e, (KeyboardInterrupt, PluginError)):
                raise
            raise _incompatible([f"{type(e).__name__}: {e}"], f" (while installing {h.what})") from e
        _ACTIVE.extend(hooks)
        if not in_supported_range():
            warnings.warn(
                f"yolo-plugins is tested with ultralytics{SUPPORTED_ULTRALYTICS}; ultralytics {ultralytics_version()} "
                "passed its internals check but is untested",
                stacklevel=2,
            )


def _uninstall(hooks: list[Any]) -> list[BaseException]:
    errors = []
    for h in reversed(hooks):
        try:
            h.uninstall()
        except Exception as e:  # noqa: BLE001 - restore the rest, then report
            errors.append(e)
    return errors


def unregister() -> None:
    """Restore Ultralytics exactly as it was before :func:`register` (idempotent)."""
    with _LOCK:
        errors = _uninstall(list(_ACTIVE))
        _ACTIVE.clear()
        if errors:
            raise errors[0]
