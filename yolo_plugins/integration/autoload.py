"""Make plugin YAMLs work in processes that only import Ultralytics (``yolo train ...``, DDP workers).

The installed ``yolo_plugins_autoload.pth`` runs ``import _yolo_plugins_autoload`` (this file, installed as a
top-level module so that importing it does not import the package and torch) at interpreter start. It imports nothing
heavy: it adds a meta-path finder that waits for ``ultralytics.nn.tasks`` to finish loading and then
imports ``yolo_plugins`` (which registers the modules). Set ``YOLO_PLUGINS_AUTOLOAD=0`` to disable.
"""

import os
import sys

_TARGET = "ultralytics.nn.tasks"


try:  # installed: the import hook is a top-level module beside this file (importing the package would import torch)
    from _yolo_plugins_importhook import AfterImport
except ImportError:  # this file as part of the package (a source checkout)
    from .importhook import AfterImport


_WARNED = []


def _register() -> None:
    """Import yolo_plugins (which registers it). On any failure, Ultralytics stays as it was (register() is all or
    nothing) and one warning per process says why: stock models keep working."""
    try:
        import yolo_plugins  # noqa: F401  registers on import
    except Exception as e:  # noqa: BLE001 - never break Ultralytics because of the plugin
        patch = sys.modules.get("yolo_plugins.integration.patch")
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
