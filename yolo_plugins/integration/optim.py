"""Per-module learning rates in Ultralytics' optimizer: a plugin module's ``lr_scale`` multiplies the learning rate of
its parameters.

Ultralytics builds one optimizer with the same learning rate for every parameter (in three groups: weights with
decay, norm weights, biases). Attention backbones trained from scratch want less: on the embedded data, TransNeXt at
the AdamW rate that suits YOLOv8n (0.002, batch 4) stalls at a loss plateau, while at a quarter of it it learns (the
measurements are in docs/benchmark.md). A module declares ``lr_scale`` (a class attribute; a YAML row may override
it with ``{lr_scale: ...}``); :func:`make_build_optimizer` wraps ``BaseTrainer.build_optimizer`` to move the
parameters of such modules into groups of their own at ``lr * lr_scale``, keeping every other setting of the group
they came from. The scheduler and warm-up then scale each group from its own initial rate. Models without such
modules get Ultralytics' optimizer unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .methodhook import MethodHook

__all__ = ["lr_scales", "split_param_groups", "make_build_optimizer", "TrainerHook"]


def lr_scales(model: nn.Module) -> dict[int, float]:
    """``id(parameter) -> scale`` for every parameter of a module whose ``lr_scale`` is not 1 (innermost wins)."""
    scales: dict[int, float] = {}
    for m in model.modules():  # parents before children: a child's own scale overrides its parent's
        s = getattr(m, "lr_scale", None)
        if isinstance(s, (int, float)) and not isinstance(s, bool):
            for p in m.parameters():
                scales[id(p)] = float(s)
    return {k: v for k, v in scales.items() if v != 1.0}


def split_param_groups(optimizer: torch.optim.Optimizer, scales: dict[int, float]) -> int:
    """Move parameters with a scale into new groups (one per source group and scale) at ``lr * scale``; returns how
    many parameters moved."""
    moved = 0
    for group in list(optimizer.param_groups):
        by_scale: dict[float, list] = {}
        keep = []
        for p in group["params"]:
            (by_scale.setdefault(scales[id(p)], []) if id(p) in scales else keep).append(p)
        if not by_scale:
            continue
        group["params"] = keep
        for s, params in by_scale.items():
            extra = {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr", "param_group")}
            name = f"{group.get('param_group', 'group')}*{s:g}"  # not "bias": warms up from 0 like weights
            optimizer.add_param_group({**extra, "params": params, "lr": group["lr"] * s, "param_group": name})
            moved += len(params)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return moved


def make_build_optimizer(original: Callable) -> Callable:
    """``BaseTrainer.build_optimizer`` that applies the ``lr_scale`` of plugin modules."""

    def build_optimizer(self, model, *args, **kwargs):
        optimizer = original(self, model, *args, **kwargs)
        scales = lr_scales(model)
        if scales:
            n = split_param_groups(optimizer, scales)
            from ultralytics.utils import LOGGER

            kinds = sorted({f"{s:g}" for s in scales.values()})
            LOGGER.info(f"yolo-plugins: {n} backbone/block parameter tensors at lr x {', '.join(kinds)} (lr_scale)")
        return optimizer

    return build_optimizer


class TrainerHook(MethodHook):
    """The ``BaseTrainer.build_optimizer`` replacement. Optional: a release whose trainer has no ``build_optimizer``
    keeps its own optimizer, with a warning (``lr_scale`` is then ignored). The ``on_pretrain_routine_start`` default
    callback, which every trainer runs before it builds its optimizer, is added whenever the trainer module is not
    loaded yet (the plugin never imports it early: on some releases that import fails while ``nn.tasks`` is loading).
    """

    what, required = "BaseTrainer.build_optimizer (lr_scale)", False
    MODULE, CLASS, METHOD = "ultralytics.engine.trainer", "BaseTrainer", "build_optimizer"
    EVENT, callback_always = "on_pretrain_routine_start", True

    def replacement(self, original: Callable) -> Callable:
        return make_build_optimizer(original)

    def on_missing(self) -> None:
        import warnings

        warnings.warn("yolo-plugins: this Ultralytics has no BaseTrainer.build_optimizer; lr_scale is ignored")
