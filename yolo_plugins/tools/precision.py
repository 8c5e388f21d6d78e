"""Numerical precision of plugin models: which dtype the heavy work runs in, and how far low precision moves outputs.

* :class:`GemmDtypes` records, while active, every matrix product, convolution and fused attention that PyTorch
  dispatches (after autocast has cast the inputs) with its input dtype and its multiply-add count, so a test or the
  GPU acceptance script can prove that a half-precision model (``model.half()``, or autocast) does the bulk of its
  work in half precision, not silently in float32.
* :func:`relative_errors` and :func:`layer_outputs` compare a low-precision run with a reference run layer by layer
  (every layer of an Ultralytics model, every feature of a backbone), each error relative to the scale of that
  reference output (``max |a - b| / max |b|``): the decoded boxes of a detection model have a large maximum (pixel
  coordinates) that hides errors of the feature maps, so every layer is compared.
* :func:`measure_errors` runs that comparison over seeds (perturbed weights, random inputs): the measurement the
  tolerances of ``tests/test_precision.py`` are derived from (``scripts/precision_errors.py`` prints the table).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "CASES",
    "DTYPES",
    "Case",
    "GemmDtypes",
    "build_case",
    "case_input",
    "layer_outputs",
    "measure_errors",
    "no_grad_autocast",
    "perturb",
    "relative_errors",
    "tensors",
    "within",
]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}

# aten ops whose cost dominates a forward pass, with the argument positions of their (first, second) operands
_PRODUCTS = {
    "mm": (0, 1),
    "bmm": (0, 1),
    "addmm": (1, 2),
    "baddbmm": (1, 2),
    "baddbmm_": (1, 2),
    "addmm_": (1, 2),
    "_addmm_activation": (1, 2),
    "addbmm": (1, 2),
    "convolution": (0, 1),
    "_convolution": (0, 1),
    "mkldnn_convolution": (0, 1),
    "convolution_overrideable": (0, 1),
    "_scaled_dot_product_flash_attention_for_cpu": (0, 1),
    "_scaled_dot_product_flash_attention": (0, 1),
    "_scaled_dot_product_efficient_attention": (0, 1),
    "_scaled_dot_product_cudnn_attention": (0, 1),
    "_scaled_dot_product_attention_math": (0, 1),
}


def _macs(name: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-adds of one product: (..., M, K) @ (..., K, N); a convolution: outputs x (weight size per output)."""
    if "convolution" in name:
        return out.numel() * (b.numel() // b.shape[0])
    if "attention" in name:  # q (B, h, N, d), k (B, h, M, d): q k^T and the value product
        return 2 * a.numel() * b.shape[-2]
    return a.numel() * b.shape[-1]


@dataclass
class _Call:
    op: str
    dtypes: tuple[torch.dtype, torch.dtype]
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    macs: int


class GemmDtypes(TorchDispatchMode):
    """Record the dtypes and sizes of the matrix products, convolutions and fused attentions run while active.

    Ops are seen below autocast, i.e. with the dtypes they really run in. Use as a context manager::

        with GemmDtypes() as rec:
            model(x)
        rec.share(torch.float16)  # fraction of the multiply-adds done in float16
        rec.largest(torch.float32)  # the biggest float32 product, if any

    Attributes:
        calls: One record per product (op name, input dtypes, input shapes, multiply-adds).
    """

    def __init__(self):
        super().__init__()
        self.calls: list[_Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        pos = _PRODUCTS.get(name)
        if pos is not None:
            a, b = args[pos[0]], args[pos[1]]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                first = out[0] if isinstance(out, (tuple, list)) else out
                self.calls.append(
                    _Call(name, (a.dtype, b.dtype), (tuple(a.shape), tuple(b.shape)), _macs(name, a, b, first))
                )
        return out

    def macs(self, dtype: torch.dtype | None = None) -> int:
        """Multiply-adds of the products whose inputs are ``dtype`` (any: None)."""
        return sum(c.macs for c in self.calls if dtype is None or dtype in c.dtypes)

    def share(self, dtype: torch.dtype) -> float:
        """Fraction of all recorded multiply-adds whose inputs are in ``dtype``."""
        total = self.macs()
        return self.macs(dtype) / total if total else 0.0

    def largest(self, dtype: torch.dtype) -> _Call | None:
        """The product with the most multiply-adds among those with an input in ``dtype``, or None."""
        hits = [c for c in self.calls if dtype in c.dtypes]
        return max(hits, key=lambda c: c.macs) if hits else None

    def summary(self) -> dict[str, float]:
        """Share of the multiply-adds per dtype, e.g. ``{"float16": 0.998, "float32": 0.002}``."""
        total = self.macs() or 1
        out: dict[str, float] = {}
        for c in self.calls:
            key = str(c.dtypes[0]).replace("torch.", "")
            out[key] = out.get(key, 0.0) + c.macs / total
        return out


def tensors(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a (nested) output, in order (dict values included)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors(o)]
    return []


def relative_errors(out: Any, ref: Any) -> list[float]:
    """``max |a - b| / max |b|`` for each pair of tensors of two outputs of the same structure (computed in float64).

    A reference that is all zeros gives the absolute error. Non-finite values in ``out`` give ``inf``.
    """
    errs = []
    for a, b in zip(tensors(out), tensors(ref), strict=True):
        if a.shape != b.shape:
            raise ValueError(f"outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if not torch.isfinite(a).all():
            errs.append(math.inf)
            continue
        scale = b.abs().max().item() if b.numel() else 0.0
        diff = (a - b).abs().max().item() if b.numel() else 0.0
        errs.append(diff / scale if scale > 0 else diff)
    return errs


@contextlib.contextmanager
def within(*managers):
    """Enter every context manager in ``managers`` (a context factory for :func:`layer_outputs`)."""
    with contextlib.ExitStack() as stack:
        for m in managers:
            stack.enter_context(m)
        yield


def layer_outputs(model: nn.Module, x: torch.Tensor, context: Callable[[], Any] | None = None) -> list[torch.Tensor]:
    """Run ``model(x)`` and return every layer's output: each row of an Ultralytics model (``model.model``), each
    feature of a backbone (its list output), or the output of any other module; all in order, as floating tensors."""
    layers = getattr(model, "model", None)
    outs: list[torch.Tensor] = []
    hooks = []
    if isinstance(layers, nn.Sequential):
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.extend(tensors(o))) for m in layers]
    try:
        with context() if context is not None else torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs if hooks else tensors(y)


def perturb(model: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Move weights away from their initialisation, as training does (in place; returns ``model``).

    Adds Gaussian noise of std ``scale`` to every parameter (zero-initialised biases, layer scales, temperatures and
    position biases then matter) and gives BatchNorms non-trivial running statistics.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g).to(p) * scale)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@dataclass
class ErrorStats:
    """Worst relative error per (dtype, mode) over seeds, and the per-seed worst values it comes from."""

    name: str
    per_seed: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def worst(self, dtype: str, mode: str) -> float:
        return max(self.per_seed[(dtype, mode)])


def measure_errors(
    build: Callable[[], nn.Module],
    make_input: Callable[[torch.Generator], torch.Tensor],
    name: str = "",
    seeds: Iterable[int] = range(5),
    dtypes: Iterable[str] = ("float16", "bfloat16"),
    modes: Iterable[str] = ("cast", "autocast"),
) -> ErrorStats:
    """The worst layer-wise relative error of low-precision runs against float32 (float64 against... see below).

    For each seed: a model from ``build()`` (seeded), :func:`perturb`-ed, in eval mode, and an input from
    ``make_input``. The float32 run is compared with a float64 copy ("float32" entries), and every low-precision run
    (``cast``: a copy converted with ``.to(dtype)``, input converted too; ``autocast``: the float32 model under
    ``torch.autocast("cpu", dtype)``) with the float32 run. Each entry is the worst layer of that seed.

    Returns:
        :class:`ErrorStats` with ``per_seed[(dtype, mode)]`` lists (``("float32", "cast")`` = float32 vs float64).
    """
    stats = ErrorStats(name)
    for seed in seeds:
        torch.manual_seed(seed)
        model = perturb(build(), seed=seed).eval()
        x = make_input(torch.Generator().manual_seed(seed))
        ref = layer_outputs(model, x)
        exact = layer_outputs(copy.deepcopy(model).double(), x.double())
        stats.per_seed.setdefault(("float32", "cast"), []).append(max(relative_errors(ref, exact)))
        for dt in dtypes:
            low = DTYPES[dt]
            for mode in modes:
                if mode == "cast":
                    out = layer_outputs(copy.deepcopy(model).to(low), x.to(low))
                else:
                    out = layer_outputs(model, x, lambda low=low: no_grad_autocast(low))
                stats.per_seed.setdefault((dt, mode), []).append(max(relative_errors(out, ref)))
    return stats


@contextlib.contextmanager
def no_grad_autocast(dtype: torch.dtype, device: str = "cpu"):
    """``torch.no_grad()`` and ``torch.autocast(device, dtype)`` together (for :func:`layer_outputs`)."""
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        yield


# ---------------------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One measured/tested object: a plugin block (constructor arguments), a backbone or a whole model (fused, in eval
    mode, as Ultralytics validates and predicts), with the input shape it runs on and the family it belongs to."""

    family: str
    kind: str  # "block", "backbone" or "model"
    target: str  # class name (block), create_backbone name, or model YAML name
    shape: tuple[int, int, int, int]
    args: tuple = ()
    kwargs: tuple = ()  # (key, value) pairs


CASES: dict[str, Case] = {
    c.target if c.kind != "block" else f"{c.target}{list(c.args)}": c
    for c in (
        Case("transnext", "block", "TransNeXtBlock", (2, 64, 12, 20), (64,)),
        Case("transnext", "block", "TransNeXtBlock", (2, 64, 13, 19), (64, 4, 4.0, None, 4)),  # pooled by sr_ratio
        Case("transnext", "block", "ConvGLU", (2, 64, 12, 20), (64,)),
        Case("transnext", "block", "C2fTransNeXt", (2, 32, 12, 20), (32, 64, 1)),
        Case("transxnet", "block", "TransXNetBlock", (2, 64, 12, 20), (64,), (("pos_size", 8),)),
        Case("transxnet", "block", "DMixer", (2, 64, 12, 20), (64,)),
        Case("transxnet", "block", "C2fTransXNet", (2, 32, 12, 20), (32, 64, 1)),
        Case("repvit", "block", "RepViTBlock", (2, 64, 12, 20), (64,)),
        Case("repvit", "block", "RepViTDown", (2, 32, 12, 20), (32, 64)),
        Case("repvit", "block", "C2fRepViT", (2, 32, 12, 20), (32, 64, 2)),
        Case("ca", "block", "ContextAggregation", (2, 64, 12, 20), (64,)),
        Case("transnext", "backbone", "transnext_micro", (1, 3, 64, 96)),
        Case("transxnet", "backbone", "transxnet_t", (1, 3, 64, 96)),
        Case("repvit", "backbone", "repvit_m0_9", (1, 3, 64, 96)),
        Case("transnext", "model", "yolov8n-transnext.yaml", (1, 3, 64, 96)),
        Case("transxnet", "model", "yolov8n-transxnet.yaml", (1, 3, 64, 96)),
        Case("repvit", "model", "yolov8n-repvit.yaml", (1, 3, 64, 96)),
        Case("ca", "model", "yolov8n-ca.yaml", (1, 3, 64, 96)),
        Case("stock", "model", "yolov8n.yaml", (1, 3, 64, 96)),
    )
}


def build_case(case: Case) -> nn.Module:
    """The case's module with its initial weights (seed first for reproducible weights), in eval mode; models fused."""
    if case.kind == "block":
        from ..nn import context_aggregation, repvit, transnext, transxnet

        for module in (transnext, transxnet, repvit, context_aggregation):
            if hasattr(module, case.target):
                return getattr(module, case.target)(*case.args, **dict(case.kwargs)).eval()
        raise ValueError(f"no plugin block named {case.target!r}")
    if case.kind == "backbone":
        from ..nn.backbone import create_backbone

        return create_backbone(case.target).eval()
    from .shapes import build_model

    model = build_model(case.target).eval()
    return model.fuse(verbose=False)


def case_input(case: Case, generator: torch.Generator) -> torch.Tensor:
    """An input of the case's shape: images in [0, 1] for backbones and models, standard normal maps for blocks."""
    if case.kind == "block":
        return torch.randn(case.shape, generator=generator)
    return torch.rand(case.shape, generator=generator)


_COLUMNS = (
    ("float32", "cast", "fp32 vs fp64"),
    ("float16", "cast", "fp16 cast"),
    ("float16", "autocast", "fp16 autocast"),
    ("bfloat16", "cast", "bf16 cast"),
    ("bfloat16", "autocast", "bf16 autocast"),
)


def error_table(names: Iterable[str], seeds: int = 10, threads: int | None = 1, log: Callable | None = None) -> str:
    """Measure :func:`measure_errors` for the named :data:`CASES` and return a Markdown table (worst over seeds, with
    the median in brackets) under a line naming the date, machine and settings."""
    import datetime

    from .speed import machine_line

    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name in names:
        case = CASES[name]
        stats = measure_errors(lambda c=case: build_case(c), lambda g, c=case: case_input(c, g), name, range(seeds))
        cells = []
        for dt, mode, _ in _COLUMNS:
            v = sorted(stats.per_seed[(dt, mode)])
            cells.append(f"{v[-1]:.1e} ({v[len(v) // 2]:.1e})")
        rows.append(f"| {name} | {case.family} | {'x'.join(map(str, case.shape))} | " + " | ".join(cells) + " |")
        if log:
            log(rows[-1])
    head = (
        f"{datetime.date.today()}; {machine_line(threads)}; {seeds} seeds (weights perturbed by N(0, 0.05), random "
        "input); worst layer-wise max|a - b| / max|b| over seeds (median in brackets); low precision vs float32, "
        "float32 vs float64\n\n"
        "| case | family | input | " + " | ".join(c[2] for c in _COLUMNS) + " |\n"
        "| --- | --- | --- | " + " | ".join("---" for _ in _COLUMNS) + " |\n"
    )
    return head + "\n".join(rows)
