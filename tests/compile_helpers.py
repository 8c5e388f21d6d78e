"""torch.compile helpers for the tests: graph breaks of a model, and which of them happen inside plugin code.

``graph_breaks(model, x)`` runs ``torch._dynamo.explain`` (Dynamo's tracing with a counting backend, no code
generation: seconds, not the minutes of an inductor compile) and returns one :class:`GraphBreak` per break, with the
reason Dynamo gives and the innermost frame of the user stack (file and line) where it happened. ``in_plugin`` tells
whether that frame, or any frame of its stack, is in ``yolo_plugins``: a break in Ultralytics' own code (stock models
have none at the time of writing) is not the plugin's.

Example (in a test)::

    from compile_helpers import graph_breaks

    breaks = graph_breaks(model.eval(), torch.zeros(1, 3, 64, 64))
    assert not [b for b in breaks if b.in_plugin], "\\n".join(map(str, breaks))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

PLUGIN_DIR = str(Path(__file__).resolve().parents[1] / "yolo_plugins")


@dataclass
class GraphBreak:
    """One graph break: Dynamo's reason and the user frames (``file:line in function``), innermost last."""

    reason: str
    frames: list[str] = field(default_factory=list)
    in_plugin: bool = False

    def __str__(self) -> str:
        where = self.frames[-1] if self.frames else "?"
        return f"{where}: {self.reason.splitlines()[0] if self.reason else ''}"


def _frames(stack) -> list[str]:
    out = []
    for f in stack or []:
        name = getattr(f, "filename", None) or getattr(f, "co_filename", "?")
        out.append(f"{name}:{getattr(f, 'lineno', '?')} in {getattr(f, 'name', '?')}")
    return out


def graph_breaks(model: torch.nn.Module, *inputs: torch.Tensor, plugin_dir: str = PLUGIN_DIR) -> list[GraphBreak]:
    """Graph breaks of ``model(*inputs)`` under ``torch.compile`` (``torch._dynamo.explain``), in the order Dynamo
    met them. The model runs as it is (eval/train mode, grad mode of the caller); Dynamo's caches are reset first."""
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(*inputs)
    finally:
        torch._dynamo.reset()
    out = []
    for r in explanation.break_reasons:
        frames = _frames(getattr(r, "user_stack", None))
        out.append(GraphBreak(str(getattr(r, "reason", r)), frames, any(plugin_dir in f for f in frames)))
    return out


MAX_BLOCKS = 2  # two blocks per stage keep what chains blocks (caches shared by the blocks of a stage)


def shorten_backbones(model: torch.nn.Module) -> torch.nn.Module:
    """Cut every stage of the TransNeXt / TransXNet backbones inside ``model`` to ``MAX_BLOCKS`` blocks (in place;
    returns it). Graph building (Dynamo, TorchScript tracing, ONNX export) then takes minutes less; every code path
    stays, the blocks of a stage being identical."""
    for m in model.modules():
        name = type(m).__name__
        stages = [f"block{i}" for i in range(1, 5)] if name == "TransNeXt" else []
        for attr in stages:
            setattr(m, attr, getattr(m, attr)[:MAX_BLOCKS])
        if name == "TransXNet":
            for i in (0, 2, 4, 6):
                m.network[i] = m.network[i][:MAX_BLOCKS]
    return model


@contextmanager
def short_variants() -> Iterator[None]:
    """Models built inside (from a YAML, by Ultralytics' trainer, ...) get what :func:`shorten_backbones` does: every
    TransNeXt / TransXNet variant is declared with ``MAX_BLOCKS`` blocks per stage meanwhile."""
    from yolo_plugins.nn.transnext import TransNeXt
    from yolo_plugins.nn.transxnet import TransXNet

    saved = {TransNeXt: TransNeXt.variants, TransXNet: TransXNet.variants}
    try:
        for cls, key in ((TransNeXt, "depths"), (TransXNet, "layers")):
            cls.variants = {k: {**v, key: [min(d, MAX_BLOCKS) for d in v[key]]} for k, v in cls.variants.items()}
        yield
    finally:
        for cls, table in saved.items():
            cls.variants = table
