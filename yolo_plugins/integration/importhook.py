"""``AfterImport``: run a callback right after a module finishes loading, without importing it early.

Standard library only: the installed copy (top-level ``_yolo_plugins_importhook``) is imported at interpreter start by
the autoload hook (:mod:`yolo_plugins.integration.autoload`), which must not import torch or the package.
"""

import sys


class AfterImport:
    """Meta-path finder: lets module ``name`` load as usual, then calls ``callback()`` (once). Imports nothing
    itself; :mod:`yolo_plugins.integration.optim` uses it too."""

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
