"""Make plugin YAMLs work in processes that only import Ultralytics (``yolo train ...``, DDP workers).

The installed ``yolo_plugins_autoload.pth`` runs ``import _yolo_plugins_autoload`` (this file, installed as a
top-level module so that importing it does not import the package and torch) at interpreter start. It imports nothing
heavy: it adds a meta-path finder that waits for ``ultralytics.nn.tasks`` to finish loading and then
imports ``yolo_plugins`` (which registers the modules). Set ``YOLO_PLUGINS_AUTOLOAD=0`` to disable.
"""

import os
import sys

_TARGET = "ultralytics.nn.tasks"


class _AfterTasksImport:
    """Meta-path finder: delegates the import of ``ultralytics.nn.tasks``, then registers yolo_plugins."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _remove()
            try:
                import yolo_plugins  # noqa: F401  registers on import
            except Exception as e:  # noqa: BLE001 - never break Ultralytics because of the plugin
                print(
                    f"yolo-plugins: autoload failed ({type(e).__name__}: {e}); `import yolo_plugins` by hand",
                    file=sys.stderr,
                )

        spec.loader.exec_module = exec_then_register
        return spec


_FINDER = _AfterTasksImport()


def _remove() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install() -> None:
    """Add the finder (no-op if disabled, already added, or Ultralytics' tasks is already imported)."""
    if os.environ.get("YOLO_PLUGINS_AUTOLOAD", "1").lower() in ("0", "false", "no", "off"):
        return
    if _TARGET in sys.modules:
        if "yolo_plugins.patch" not in sys.modules:
            import yolo_plugins  # noqa: F401
        return
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


install()
