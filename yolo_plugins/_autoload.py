"""Make plugin YAMLs work in processes that only import Ultralytics (``yolo train ...``, DDP workers).

The installed ``yolo_plugins_autoload.pth`` runs ``import _yolo_plugins_autoload`` (this file, installed as a
top-level module so that importing it does not import the package and torch) at interpreter start. It imports nothing
heavy: it adds a meta-path finder that waits for ``ultralytics.nn.tasks`` to finish loading and then
imports ``yolo_plugins`` (which registers the modules). Set ``YOLO_PLUGINS_AUTOLOAD=0`` to disable.
"""

import os
import sys

_TARGET = "ultralytics.nn.tasks"


class AfterImport:
    """Meta-path finder: lets module ``name`` load as usual, then calls ``callback()`` (once). Imports nothing
    itself; :mod:`yolo_plugins.optim` uses it too."""

    def __init__(self, name, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        import importlib.machinery

        self.remove()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module):
            exec_module(module)
            self.callback()

        spec.loader.exec_module = exec_then_call
        return spec

    def remove(self):
        if self in sys.meta_path:
            sys.meta_path.remove(self)


_WARNED = []


def _register() -> None:
    """Import yolo_plugins (which registers it). On any failure, Ultralytics stays as it was (register() is all or
    nothing) and one warning per process says why: stock models keep working."""
    try:
        import yolo_plugins  # noqa: F401  registers on import
    except Exception as e:  # noqa: BLE001 - never break Ultralytics because of the plugin
        patch = sys.modules.get("yolo_plugins.patch")
        if patch is not None and patch.is_registered():  # registered but failed afterwards: take it all back
            patch.unregister()
        if not _WARNED:
            _WARNED.append(e)
            print(
                f"yolo-plugins: not registered, Ultralytics runs without it ({type(e).__name__}: {e}). "
                "Set YOLO_PLUGINS_AUTOLOAD=0 to silence this.",
                file=sys.stderr,
            )


_FINDER = AfterImport(_TARGET, _register)


def install() -> None:
    """Add the finder (no-op if disabled, already added, or Ultralytics' tasks is already imported)."""
    if os.environ.get("YOLO_PLUGINS_AUTOLOAD", "1").lower() in ("0", "false", "no", "off"):
        return
    if _TARGET in sys.modules:
        if "yolo_plugins" not in sys.modules:
            _register()
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


if __name__ == "_yolo_plugins_autoload":  # the installed copy, which the .pth file imports at interpreter start
    install()
