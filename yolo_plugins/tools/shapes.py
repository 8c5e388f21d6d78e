"""Per-layer table of a model YAML: index, from, module, resolved arguments, output channels, stride, output shape."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import PluginError
from ..integration.patch import RowRecord, recording

__all__ = ["LayerShape", "build_model", "model_shapes", "format_shapes", "parse_imgsz"]


@dataclass
class LayerShape:
    """One row of the table (``shape``/``stride`` as measured by a forward pass at the requested size)."""

    index: int
    source: Any
    n: int
    module: str
    args: str
    channels: Any
    stride: Any
    shape: Any
    params: int


def parse_imgsz(imgsz: int | str | tuple | list) -> tuple[int, int]:
    """``640`` -> (640, 640); ``"480,640"`` / ``(480, 640)`` -> (480, 640) as (height, width)."""
    if isinstance(imgsz, str):
        imgsz = [int(v) for v in imgsz.replace("x", ",").split(",") if v.strip()]
    if isinstance(imgsz, int):
        imgsz = [imgsz]
    imgsz = list(imgsz)
    if not 1 <= len(imgsz) <= 2 or any(not isinstance(v, int) or v < 8 for v in imgsz):
        raise PluginError(f"imgsz must be one size or 'height,width' of at least 8 pixels, got {imgsz}")
    return (imgsz[0], imgsz[-1])


def build_model(model: str | os.PathLike | dict, verbose: bool = False) -> torch.nn.Module:
    """Build the Ultralytics model of a YAML name, path or dict with the class its task needs (detect, segment,
    pose, obb, classify, and semantic/depth where the installed Ultralytics has them)."""
    from ultralytics.nn import tasks

    cfg = model if isinstance(model, dict) else tasks.yaml_model_load(model)
    task = tasks.guess_model_task(cfg)
    cls = getattr(tasks, TASK_MODELS.get(task, "DetectionModel"), tasks.DetectionModel)
    return cls(cfg, verbose=verbose)


TASK_MODELS = {
    "detect": "DetectionModel",
    "segment": "SegmentationModel",
    "semantic": "SemanticSegmentationModel",
    "depth": "DepthModel",
    "pose": "PoseModel",
    "obb": "OBBModel",
    "classify": "ClassificationModel",
}  # Ultralytics task -> model class in ultralytics.nn.tasks


def _describe(out: Any, h: int) -> tuple[Any, Any]:
    """(shape, stride) of a layer output: a tensor, a list of tensors (backbone) or a head's tuple/dict."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape), (h // out.shape[2] if out.ndim == 4 and out.shape[2] else "-")
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) and o.ndim == 4 for o in out):
        return [tuple(o.shape) for o in out], [h // o.shape[2] for o in out]
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return tuple(out[0].shape), "-"  # a head's (predictions, raw) tuple
    if isinstance(out, dict):
        return {k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)}, "-"
    return type(out).__name__, "-"


def model_shapes(model: str | os.PathLike | dict, imgsz: int | str | tuple = 640) -> list[LayerShape]:
    """Build ``model`` (a YAML path or dict), run one image of ``imgsz`` through it, describe every layer.

    Examples:
        >>> rows = model_shapes("model_yamls/yolov8-ca.yaml", imgsz=160)
        >>> rows[0].module
        'ultralytics.nn.modules.conv.Conv'
    """
    from ultralytics.nn import tasks

    h, w = parse_imgsz(imgsz)
    cfg = model if isinstance(model, dict) else tasks.yaml_model_load(model)  # a derived name is derived here
    with recording() as records:
        net = build_model(cfg)
    records: list[RowRecord]
    outputs: dict[int, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: outputs.__setitem__(k, o)) for k, m in enumerate(net.model)]
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, h, w))
    finally:
        for hk in hooks:
            hk.remove()
    rows = []
    for r, layer in zip(records, net.model):
        shape, stride = _describe(outputs.get(r.index), h)
        params = sum(p.numel() for p in layer.parameters())
        rows.append(LayerShape(r.index, r.source, r.n, r.module, r.args, r.channels, stride, shape, params))
    return rows


def format_shapes(rows: list[LayerShape], imgsz: int | str | tuple = 640) -> str:
    """The table as fixed-width text (what ``yolo-plugins shapes`` prints)."""
    h, w = parse_imgsz(imgsz)
    head = ("idx", "from", "n", "params", "module", "arguments", "c_out", "stride", f"output @ {h}x{w}")
    body = [
        (
            str(r.index),
            str(r.source),
            str(r.n),
            f"{r.params:,}",
            r.module.replace("ultralytics.nn.modules.", "").replace("yolo_plugins.", "plugins."),
            r.args,
            str(r.channels),
            str(r.stride),
            str(r.shape),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    widths[5] = min(widths[5], 48)
    fmt = "  ".join(f"{{:{'>' if i in (0, 2, 3) else '<'}{wd}}}" for i, wd in enumerate(widths))
    total = sum(r.params for r in rows)
    clip = [tuple(c if i != 5 or len(c) <= 48 else c[:45] + "..." for i, c in enumerate(x)) for x in body]
    lines = [fmt.format(*head)] + [fmt.format(*x) for x in clip]
    return "\n".join(lines + [f"{len(rows)} layers, {total:,} parameters"])
