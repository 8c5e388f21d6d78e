"""The hooks into Ultralytics: ``patch`` installs and removes them all; ``parser`` (YAML rows), ``names`` (models by
name), ``derive``/``swap`` (any stock model with a plugin backbone), ``optim`` (per-module learning rates), ``compat``
(the supported releases), ``autoload`` (registration in processes that only import Ultralytics)."""
