"""Layers shared by every family: stochastic depth, channels-first LayerNorm, Conv-BN folding, the CSP wrapper.

No family re-implements these; each family file imports what it needs from here.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "TORCH_EXPORT_FORMATS",
    "CSPBlock",
    "DropPath",
    "Fusable",
    "LayerNorm",
    "LayerNorm2d",
    "addcmul",
    "batched_matmul",
    "channels_last",
    "drop_path_rates",
    "export_constant",
    "export_format",
    "export_is_dynamic",
    "exporting_with",
    "for_xnnpack",
    "fuse_conv_bn",
    "map_to_tokens",
    "split_sizes",
    "sum_last",
    "table_building",
    "to_2tuple",
    "tokens_to_map",
    "tracing",
    "tracing_for_ncnn",
    "untraced",
]


class Fusable:
    """Mixin for re-parameterisable plugin modules.

    ``fuse()`` folds the module's training-time branches (Conv-BN pairs, RepVGG-style parallel branches) into single
    convs in place, switching ``forward`` to the deployed form. It must be idempotent. The patched Ultralytics
    ``model.fuse()`` calls it on every ``Fusable`` submodule, children before parents.
    """

    def fuse(self) -> None:
        raise NotImplementedError


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in channels-last memory (a no-op if it already is): the backbones run their convs in this layout,
    where oneDNN's depthwise and large-kernel convs are several times faster than in NCHW and token views are free.

    Under ``torch.export`` (ExecuTorch, LiteRT) the layout is left as it is: there a memory format becomes a tensor's
    "dim order", and ExecuTorch's kernels refuse to concatenate or split tensors of different dim orders (the
    channels-last backbone features meet the neck's contiguous ones); the values are the same either way."""
    if torch.compiler.is_exporting():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def addcmul(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``t + a * b``: one fused ``torch.addcmul`` in eager runs, written out while tracing, scripting or exporting
    (the same rounding: the product, then the sum). PyTorch's ONNX exporter emits ``addcmul`` with a float32 constant
    and casts, so a half-precision graph (``export(half=True)`` on a GPU) mixed float16 and float32 and ONNX Runtime
    refused to load it; pnnx (NCNN) has no ``addcmul`` and wrote an unloadable ``model_pnnx.py``."""
    if tracing():
        return t + a * b
    return torch.addcmul(t, a, b)


def tracing() -> bool:
    """True while the TorchScript tracer or scripter records the forward: ``torch.jit.trace``/``script``,
    ``torch.onnx.export(dynamo=False)`` as Ultralytics calls it, and the OpenVINO and pnnx/NCNN converters, which
    trace first."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


@contextmanager
def untraced() -> Iterator[None]:
    """Suspend the TorchScript tracer (``torch.jit.trace``, ``torch.onnx.export``, pnnx, OpenVINO): what is computed
    inside enters the traced graph as a constant, e.g. a kernel merged from parameters (a converter needs a conv's
    kernel shape; some fold nothing)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


@contextmanager
def table_building() -> Iterator[None]:
    """Context for building a size-dependent constant table (a mask, an index, a geometry) that may be cached: no
    autograd graph, and never an inference tensor (a cached inference tensor breaks later training).

    Under ``torch.compile``/``torch.export`` nothing is switched: the table's inputs need no gradients anyway, and each
    ``no_grad`` block would enter the graph as a ``set_grad_enabled`` pair, which ``torch.export`` splits into
    sub-graphs and inlines again, re-compiling the whole graph per split (ExecuTorch's export of yolov8n-transnext
    spent 4 minutes at 64 px on it)."""
    if torch.compiler.is_compiling():
        yield
        return
    with torch.inference_mode(False), torch.no_grad():
        yield


@dataclass
class _Export:
    """An Ultralytics export in progress: its arguments; the owners of the constants its eager dry run recorded."""

    args: object
    serial: int
    owners: list = field(default_factory=list)


_EXPORT: ContextVar[_Export | None] = ContextVar("yolo_plugins_export", default=None)
_SERIAL = itertools.count(1)
_RECORDS = "_yolo_plugins_export_constants"  # on the owner itself: torch.export runs a deep copy of the model
TORCH_EXPORT_FORMATS = ("executorch", "litert", "tflite")  # where export_constant records are used (see there)
T = TypeVar("T")


@contextmanager
def exporting_with(args: object) -> Iterator[None]:
    """Mark an Ultralytics export in progress with its arguments (``integration.export`` wraps ``Exporter.__call__``
    in it), so graph paths can depend on them (see :func:`export_is_dynamic`) and the exporter's dry run can record
    :func:`export_constant` values for ``torch.export``. Everything recorded is dropped on exit."""
    state = _Export(args, next(_SERIAL))
    token = _EXPORT.set(state)
    try:
        yield
    finally:
        _EXPORT.reset(token)
        for owner in state.owners:
            owner.__dict__.pop(_RECORDS, None)


def export_constant(owner: object, key: Hashable, fn: Callable[[], T]) -> T:
    """``fn()``: a tensor (or tuple of tensors) computed only from ``owner``'s weights or from sizes (a merged kernel,
    BatchNorms folded into a 1x1 conv, a geometry table), entering exported graphs as a constant.

    - Eager (and ``torch.compile``): ``fn()``, differentiable. Inside an Ultralytics export the exporter's eager dry
      run (``model(im)`` before converting) also records the value on ``owner`` (a module or a function) under
      ``key``.
    - Traced (TorchScript, ONNX, OpenVINO, pnnx): ``fn()`` outside the trace (converters need a kernel's shape).
    - ``torch.export`` for ExecuTorch or LiteRT: the value recorded in this export, so the program holds the result
      instead of the operations that built it from parameters: XNNPACK delegates only convolutions whose weights are
      constants (ExecuTorch ran TransXNet's merged depthwise kernels on its portable kernels), and a bicubic resize
      of a position table at run time cost ExecuTorch 1.1 s per block (LiteRT, yolov8n-transxnet at 640: 9.8 s per
      image without the records, 1.9 s with them). Without a record (another format, or ``torch.export``
      outside Ultralytics' exporter) ``fn()`` is exported as operations: equal results either way.
    """
    state = _EXPORT.get()
    if tracing():
        with untraced(), torch.no_grad():
            return fn()
    recorded = export_format() in TORCH_EXPORT_FORMATS
    if recorded and torch.compiler.is_exporting():
        serial, value = owner.__dict__.get(_RECORDS, {}).get(key, (None, None))
        return value if serial == state.serial else fn()
    value = fn()
    if recorded and not torch.compiler.is_compiling():  # (Ultralytics' exporter runs with autograd on)
        with torch.inference_mode(False), torch.no_grad():  # plain tensors: no inference tensors in a program
            kept = tuple(map(_clone, value)) if isinstance(value, tuple) else _clone(value)
        if _RECORDS not in owner.__dict__:
            owner.__dict__[_RECORDS] = {}
            state.owners.append(owner)
        owner.__dict__[_RECORDS][key] = (state.serial, kept)
    return value


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def _export_args() -> Any:
    state = _EXPORT.get()
    return None if state is None else state.args


def export_is_dynamic() -> bool:
    """True inside an Ultralytics export with ``dynamic=True``: the graph must run at any input height and width
    (Ultralytics predicts such a model at each image's own letterboxed size, e.g. 640x480 for a portrait photo)."""
    return bool(getattr(_export_args(), "dynamic", False))


def export_format() -> str | None:
    """The format of the Ultralytics export in progress (``"onnx"``, ``"mnn"``, ...), None outside one."""
    fmt = getattr(_export_args(), "format", None)
    return str(fmt).lower() if fmt else None


def tracing_for_ncnn() -> bool:
    """True while pnnx (the NCNN converter Ultralytics calls) traces the model: NCNN has no gather, so graph paths
    that gather take their slice-only form."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("pnnx"):
            return True
        frame = frame.f_back
    return False


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view for a channels-last map."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view of contiguous tokens."""
    return x.unflatten(1, (H, W)).permute(0, 3, 1, 2)


def to_2tuple(x) -> tuple:
    """Return ``(x, x)`` for a scalar, ``tuple(x)`` for a pair."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def drop_path_rates(rate: float, depths: list[int]) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates over all blocks, split per stage (timm/official convention)."""
    rates = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
    out, i = [], 0
    for d in depths:
        out.append(rates[i : i + d])
        i += d
    return out


class DropPath(nn.Module):
    """Stochastic depth per sample: zero the residual branch with probability ``p`` in training, scale by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...)."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def for_xnnpack() -> bool:
    """True while a graph is built for XNNPACK: ``torch.export`` in an Ultralytics export to ExecuTorch or LiteRT, and
    the exporter's eager dry run before it (which records the :func:`export_constant` values the graph reads).

    Graph paths then avoid operations that ExecuTorch's XNNPACK partitioner does not delegate (sums, splits, layer
    norms, broadcast matmul operands, unsqueezes, ``amax``): each such node ends one delegated partition and starts
    another, and lowering time grows with partitions times graph size (yolov8n-transnext at 64 px with two-block
    stages: 105 partitions, 163 s; the full model at 640 did not lower within 50 minutes)."""
    return export_format() in TORCH_EXPORT_FORMATS and not tracing()


def sum_last(x: torch.Tensor, keepdim: bool = False, mean: bool = False) -> torch.Tensor:
    """Sum (or ``mean``) over the last dimension: ``x.sum(-1)``; for XNNPACK (:func:`for_xnnpack`) a mean over the
    inner dimensions of a (1, M, n, 1) view, which it delegates as a global average pooling (it has no sum; a matmul
    with a constant column of ones, shared by several uses, broke ExecuTorch's serialisation)."""
    n = x.shape[-1]
    if not for_xnnpack():
        return x.mean(-1, keepdim=keepdim) if mean else x.sum(-1, keepdim=keepdim)
    s = x.reshape(1, -1, n, 1).mean((2, 3), keepdim=True).reshape(*x.shape[:-1], 1)
    s = s if mean else s * n
    return s if keepdim else s.reshape(x.shape[:-1])


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for (..., n, k) and (..., k, m) operands; for XNNPACK (:func:`for_xnnpack`) one ``bmm`` on 3-d
    views (``@`` on 4-d operands exports as expand + bmm, and XNNPACK does not delegate the expand, even to the
    same shape)."""
    if not for_xnnpack():
        return a @ b
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    n = math.prod(batch)

    def flat(t: torch.Tensor) -> torch.Tensor:
        t = t if math.prod(t.shape[:-2]) == n else t.expand(*batch, *t.shape[-2:])
        return t.reshape(n, *t.shape[-2:])

    return torch.bmm(flat(a), flat(b)).reshape(*batch, a.shape[-2], b.shape[-1])


def split_sizes(x: torch.Tensor, sizes: list[int], dim: int = -1) -> list[torch.Tensor]:
    """``x.split(sizes, dim)``; for XNNPACK (:func:`for_xnnpack`) slices (it delegates slices, not splits)."""
    if not for_xnnpack():
        return list(x.split(sizes, dim))
    out, start = [], 0
    for n in sizes:
        out.append(x.narrow(dim, start, n))
        start += n
    return out


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state_dict) that is written out for XNNPACK (:func:`for_xnnpack`), which
    has no layer norm: ``(x - mean) * rsqrt(var + eps) * w + b`` with the means of :func:`sum_last`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not for_xnnpack() or len(self.normalized_shape) != 1:
            return super().forward(x)
        xc = x - sum_last(x, keepdim=True, mean=True)
        y = xc * torch.rsqrt(sum_last(xc * xc, keepdim=True, mean=True) + self.eps)
        y = y if self.weight is None else y * self.weight
        return y if self.bias is None else y + self.bias


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, H, W) tensor; same parameters as ``nn.LayerNorm(C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an inference-mode BatchNorm that follows ``conv`` into a single biased Conv2d.

    Returns a new conv with ``w' = w * g / s`` and ``b' = (b - mean) * g / s + beta``, ``s = sqrt(var + eps)``.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused.requires_grad_(conv.weight.requires_grad)  # frozen stays frozen (exporters switch gradients off)


class CSPBlock(nn.Module):
    """C2f-style CSP wrapper whose inner bottlenecks are plugin blocks (subclasses implement ``make_block``).

    ``cv1`` (1x1 Conv-BN-SiLU) splits the input into two halves of ``c = c2 * e`` channels, ``n`` blocks run in a chain
    on the second half, every intermediate output is concatenated and ``cv2`` projects ``(2 + n) * c -> c2``.
    Uses Ultralytics' ``Conv`` so that ``model.fuse()`` folds its BatchNorms like in ``C2f``.

    Shapes: (B, c1, H, W) -> (B, c2, H, W).
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, **block_kwargs):
        super().__init__()
        from ultralytics.nn.modules.conv import Conv

        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(self.make_block(self.c, **block_kwargs) for _ in range(n))

    def make_block(self, c: int, **kwargs) -> nn.Module:
        """Return one channel-preserving inner block with ``c`` channels."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c1, H, W) -> (B, c2, H, W)."""
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))
