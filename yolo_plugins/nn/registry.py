"""The module registry: YAML name -> (class, channel rule).

Contract (in the spirit of mmengine's Registry):

* ``@register_module(channels=...)`` (decorator) or ``register_module(cls, channels=...)`` (call) adds a module under
  its class name (or ``name=``). A duplicate name is an error naming the existing entry unless ``force=True``.
* A module declares how a YAML row's channels work, one of :data:`RULES`:

  - ``"same"``: channel-preserving: built as ``cls(c1, *args)``; output channels ``c2 = c1``.
  - ``"scaled"``: ``args[0]`` is the output channel count, scaled like Ultralytics' Conv/C2f rows
    (``make_divisible(min(c2, max_channels) * width, 8)``); built as ``cls(c1, c2, *args[1:])``.
    With ``repeat=True`` the row's (depth-scaled) ``n`` becomes the third argument, as for C2f.
  - ``"backbone"``: a :class:`~yolo_plugins.nn.backbone.Backbone`: built as ``cls(*args)``, outputs a list of
    features whose channels come from its ``feature_info``; following ``Feature`` rows pick from it.
  - ``"feature"``: picks one feature of a backbone row (only :class:`~yolo_plugins.nn.backbone.Feature`).

* A trailing mapping in a row's args is passed as keyword arguments. For backbones, a mapping as the *first* argument
  maps the YAML's scale to a variant, e.g. ``[{n: m0_9, s: m1_1}]``.

This module knows nothing of Ultralytics. The patch (:mod:`yolo_plugins.integration.patch`) reads this table and,
while it is active, subscribes to it (:func:`subscribe`) to make modules registered later nameable too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch.nn as nn

from ..errors import PluginError

__all__ = [
    "RULES",
    "Entry",
    "REGISTRY",
    "register_module",
    "unregister_module",
    "get_entry",
    "list_modules",
    "plugin_modules",
    "Listener",
    "subscribe",
    "unsubscribe",
]

RULES = ("same", "scaled", "backbone", "feature")


@dataclass(frozen=True)
class Entry:
    """A registered module: its YAML ``name``, class, channel ``rule`` and whether ``n`` is passed as an argument."""

    name: str
    cls: type[nn.Module]
    rule: str
    repeat: bool = False

    @property
    def signature(self) -> str:
        """Constructor arguments as a YAML row's args supply them (``c1``/``c2`` filled in by the rule)."""
        params = list(inspect.signature(self.cls.__init__).parameters.values())[1:]
        return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in params) + ")"

    @property
    def summary(self) -> str:
        """One line: what the module computes (first docstring line)."""
        return (inspect.getdoc(self.cls) or "").split("\n")[0]


REGISTRY: dict[str, Entry] = {}


class Listener(Protocol):
    """Told about every change of :data:`REGISTRY` while subscribed."""

    def added(self, entry: Entry) -> None:
        """``entry`` was added (or replaced an entry of the same name). Raising refuses the registration."""

    def removed(self, entry: Entry) -> None:
        """``entry`` was removed."""


_LISTENERS: list[Listener] = []


def subscribe(listener: Listener) -> None:
    """Call ``listener.added``/``removed`` on every later change (idempotent)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def unsubscribe(listener: Listener) -> None:
    """Stop telling ``listener`` (idempotent)."""
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def register_module(
    cls: type[nn.Module] | None = None,
    *,
    channels: str = "same",
    repeat: bool = False,
    name: str | None = None,
    force: bool = False,
) -> Callable | type[nn.Module]:
    """Register an ``nn.Module`` subclass so model YAMLs can name it.

    Args:
        cls: The class (omit to use as a decorator).
        channels: Channel rule, one of ``"same"``, ``"scaled"``, ``"backbone"``, ``"feature"`` (see module doc).
        repeat: For ``"scaled"`` modules that take the row's ``n`` as their third argument (C2f-style).
        name: YAML name; defaults to the class name.
        force: Replace an existing entry of the same name.

    Examples:
        >>> @register_module(channels="scaled")
        ... class MyConv(nn.Module):
        ...     def __init__(self, c1, c2, k=3):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(c1, c2, k, padding=k // 2)
        ...
        ...     def forward(self, x):
        ...         return self.conv(x)
    """

    def add(c: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(c, type) and issubclass(c, nn.Module)):
            raise PluginError(f"register_module expects an nn.Module subclass, got {c!r}")
        if channels not in RULES:
            raise PluginError(f"unknown channel rule '{channels}' for {c.__name__}; use one of {RULES}")
        if repeat and channels != "scaled":
            raise PluginError(f"repeat=True needs channels='scaled' ({c.__name__})")
        key = name or c.__name__
        old = REGISTRY.get(key)
        if old is not None and old.cls is not c and not force:
            raise PluginError(
                f"a module named '{key}' is already registered ({old.cls.__module__}.{old.cls.__qualname__}); "
                "pass name= to register under another name, or force=True to replace it"
            )
        REGISTRY[key] = entry = Entry(key, c, channels, repeat)
        try:
            for listener in list(_LISTENERS):
                listener.added(entry)
        except BaseException:  # a listener refused it (e.g. the name clashes with Ultralytics): undo
            if old is None:
                del REGISTRY[key]
            else:
                REGISTRY[key] = old
            raise
        return c

    return add if cls is None else add(cls)


def unregister_module(name: str) -> None:
    """Remove a module from the registry (and, through the subscribed patch, from Ultralytics' namespace)."""
    entry = REGISTRY.pop(name, None)
    if entry is not None:
        for listener in list(_LISTENERS):
            listener.removed(entry)


def get_entry(name: str) -> Entry | None:
    """The entry registered under ``name``, or None."""
    return REGISTRY.get(name)


def list_modules() -> list[Entry]:
    """All entries, sorted by name."""
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def plugin_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) whose class is registered; empty for every stock model."""
    classes = tuple(e.cls for e in REGISTRY.values())
    return [m for m in model.modules() if isinstance(m, classes)]
