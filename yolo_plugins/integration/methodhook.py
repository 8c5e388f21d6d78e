"""``MethodHook``: replace one method of an Ultralytics class, whenever its module loads, and restore it.

The method is replaced at once when its module is loaded, right after it loads when it is not yet (an
:class:`AfterImport` finder: the plugin never imports it early; on some releases that import fails while ``nn.tasks``
is loading), and, when the plugin registers while that module is itself loading, by a default callback (``EVENT``)
that Ultralytics runs before the method's first use. Subclasses declare the target and the replacement::

    class TrainerHook(MethodHook):
        what, required = "BaseTrainer.build_optimizer (lr_scale)", False
        MODULE, CLASS, METHOD = "ultralytics.engine.trainer", "BaseTrainer", "build_optimizer"
        EVENT = "on_pretrain_routine_start"

        def replacement(self, original):
            ...

:mod:`yolo_plugins.integration.patch` installs and uninstalls them with its other hooks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

try:  # installed: the import hook lives at top level (one finder class shared with the autoload hook)
    from _yolo_plugins_importhook import AfterImport
except ImportError:  # a source checkout on sys.path
    from .importhook import AfterImport

__all__ = ["MethodHook"]

_PENDING: dict[str, MethodHook] = {}  # EVENT -> the hook its default callback patches
_CALLBACKS: dict[str, Callable] = {}  # EVENT -> that callback (one plain function per event: lists get copied)


def _callback(event: str) -> Callable:
    """The default callback of ``event``: a plain module-level function (trainers and exporters copy their callback
    lists; a bound method would be deep-copied with its hook)."""
    if event not in _CALLBACKS:

        def callback(obj: Any) -> None:
            hook = _PENDING.get(event)
            if hook is not None:
                hook.on_event(obj)

        callback.__name__ = callback.__qualname__ = f"yolo_plugins_{event}"
        _CALLBACKS[event] = callback
    return _CALLBACKS[event]


class MethodHook:
    """Replaces ``MODULE.CLASS.METHOD`` by :meth:`replacement` (see the module docstring); ``uninstall`` restores it.

    ``callback_always``: also add the default callback when the module is not imported yet (not only while it is
    loading), for methods a late ``AfterImport`` can miss.
    """

    what: str = ""
    required: bool = False
    MODULE: str = ""
    CLASS: str = ""
    METHOD: str = ""
    EVENT: str = ""
    callback_always: bool = False

    def __init__(self):
        self.original: Callable | None = None
        self.finder: AfterImport | None = None

    # -- what subclasses define
    def replacement(self, original: Callable) -> Callable:
        """The new method, wrapping ``original``."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Incompatibilities found now (the module may not be loaded yet: then none)."""
        return []

    def on_missing(self) -> None:
        """The loaded class has no such method (a required hook reports it in :meth:`problems`)."""

    def on_event(self, obj: Any) -> None:
        """The pending default callback ran for ``obj`` (the trainer or exporter): patch for the next ones."""
        self.patch()

    # -- the mechanics
    def owner(self, executed: bool = False) -> type | None:
        """The class, or None while its module is not loaded (or still loading, unless ``executed``: the
        AfterImport callback runs once the module's code has run, before importlib clears ``_initializing``)."""
        mod = sys.modules.get(self.MODULE)
        spec = getattr(mod, "__spec__", None)
        if mod is None or (getattr(spec, "_initializing", False) and not executed):
            return None
        cls = getattr(mod, self.CLASS, None)
        return cls if isinstance(cls, type) else None

    def patch(self) -> None:
        """Replace the method now (idempotent; never wraps a replacement)."""
        if self.original is not None:
            return
        cls = self.owner(executed=True)
        if cls is None:
            return
        original = vars(cls).get(self.METHOD)
        if original is None:
            self.on_missing()
            return
        if getattr(original, "yolo_plugins", False):
            return
        new = self.replacement(original)
        new.__wrapped__, new.__doc__, new.yolo_plugins = original, original.__doc__, True
        self.original = original
        setattr(cls, self.METHOD, new)

    def install(self) -> None:
        if self.owner() is not None:
            self.patch()
            return
        loading = self.MODULE in sys.modules
        if not loading:  # not imported yet: patch right after it loads
            self.finder = AfterImport(self.MODULE, self.patch)
            sys.meta_path.insert(0, self.finder)
        if loading or self.callback_always:
            _PENDING[self.EVENT] = self
            from ultralytics.utils.callbacks import base

            callbacks = base.default_callbacks.setdefault(self.EVENT, [])
            if _callback(self.EVENT) not in callbacks:
                callbacks.append(_callback(self.EVENT))

    def uninstall(self) -> None:
        if _PENDING.get(self.EVENT) is self:
            del _PENDING[self.EVENT]
        if self.finder is not None:
            self.finder.remove()
        self.finder = None
        base = sys.modules.get("ultralytics.utils.callbacks.base")
        callbacks = getattr(base, "default_callbacks", {}).get(self.EVENT, [])
        if _CALLBACKS.get(self.EVENT) in callbacks:
            callbacks.remove(_CALLBACKS[self.EVENT])
        if self.original is not None:
            setattr(getattr(sys.modules[self.MODULE], self.CLASS), self.METHOD, self.original)
            self.original = None
