"""TransNeXt: Robust Foveal Visual Perception for Vision Transformers (Shi, CVPR 2024, arXiv 2311.17132).

A four-stage hierarchical transformer. Each stage opens with an overlapping patch embedding (7x7 stride-4 conv for the
stem, 3x3 stride-2 convs between stages, each followed by LayerNorm) and stacks pre-norm blocks of a token mixer and a
Convolutional GLU channel mixer, with stochastic depth on both residuals and a LayerNorm closing the stage.

* Stages 1-3 mix tokens with **Aggregated Attention**: every query attends, through *one shared softmax*, to (a) its
  query-centred 3x3 sliding window of keys/values with a learnable position bias, and (b) keys/values pooled from the
  whole map (1x1 conv "sr", GELU, adaptive average pooling to (H/sr, W/sr), LayerNorm) with a continuous relative
  position bias (an MLP on log-spaced relative coordinates). Similarities are length-scaled cosine similarities:
  L2-normalised queries plus a learnable query embedding, times softplus(temperature) and log(local + pooled length).
  The local path also aggregates its values with query-learnable tokens + bias ("QLV" attention).
* Stage 4 uses full multi-head self-attention with the same cosine scaling, query embedding and continuous bias.

Behaviour follows the official DaiShiResearch/TransNeXt (Apache-2.0): the multi-scale ("extrapolation") code path of
``detection/dino/transnext_native.py`` (position tables computed from the actual input size, coordinates scaled by the
``pretrain_size`` of each stage), with the classifier head of ``classification/transnext.py``. Parameter names and
shapes are the official ones, so the ImageNet checkpoints (``{"model": state_dict}``) load unchanged.

Implementation differences (same math, checked against the official code and ``tests/oracles/transnext_naive.py``):
everything that depends only on the input size (relative-coordinate tables and their indices, the window padding mask,
the length scale) is computed once per (size, device) without ``torch.unique`` and cached (``clear_caches()`` frees
them); the 3x3 window is read as nine shifted views of a padded key/value map instead of ``nn.Unfold`` + batched 1x9
matmuls; the bias MLP is split per axis and sliced, and in inference (eval, no grad) its small output is cached per
module until its weights change; the sr 1x1 conv runs as a linear layer on tokens. The large (B, heads, N, P)
pooled similarities are never materialised whole: attention runs over chunks of query rows that stay in cache. In CPU
inference the shared local + pooled softmax goes through PyTorch's fused attention kernel, the local similarities
entering as one extra "sink" key per query (see ``_sink_softmax``); with autograd, export or on other devices it is
computed explicitly (bias, exp shifted by the row maximum, sum, aggregation, normalised after aggregating). With uniform
pooling (map sizes divisible by the pooled size, e.g. any multiple of 32 as input) the inference bias is a strided view
of the small table of distinct values, with the pooled keys in reversed order, so no gather at all. In inference the
Convolutional GLU also runs in chunks of map rows. Inputs of any size work: a pooled size that would be 0 (maps
smaller than ``sr``) is clamped to 1, where the official code fails.

Graphs (tracing for ONNX, OpenVINO and NCNN exports; ``torch.compile``) take ``_forward_graph``: the same math as plain
tensor operations without chunks, caches, in-place updates or branches on the autograd state (no graph breaks, stable
traces). The pooled-path bias is computed at run time from the small per-block table of the bias MLP (a constant of
the traced graph, computed outside the trace; part of the compiled graph, differentiable) by two gathers with per-axis
indices (:func:`graph_bias`; slices for NCNN, which has no gather). A run-time zero from the input anchors the table,
so that converters, which evaluate every node with constant inputs, cannot store the per-pair bias of every block
(that made 640 px files exceed ONNX's 2 GB): exported files stay near the size of the weights.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PluginError
from .backbone import Backbone, FeatureInfo
from .layers import (
    CSPBlock,
    DropPath,
    LayerNorm,
    batched_matmul,
    channels_last,
    drop_path_rates,
    export_constant,
    export_format,
    for_xnnpack,
    map_to_tokens,
    split_sizes,
    sum_last,
    table_building,
    to_2tuple,
    tokens_to_map,
    tracing,
    tracing_for_ncnn,
    untraced,
)
from .registry import register_module

__all__ = [
    "AggregatedAttention",
    "Attention",
    "Block",
    "C2fTransNeXt",
    "ConvGLU",
    "ConvolutionalGLU",
    "OverlapPatchEmbed",
    "TransNeXt",
    "TransNeXtBlock",
    "checkpoint_filter_fn",
    "cpb_geometry",
    "gather_bias",
    "graph_bias",
    "graph_bias_table",
    "local_geometry",
    "pooled_bias",
    "sliced_bias",
    "strided_bias",
]


# ----------------------------------------------------------------------------------------------------------------------
# Geometry that depends only on the input size: computed once per (size, device), then served from a cache.
# ----------------------------------------------------------------------------------------------------------------------


def _pool_bounds(n: int, p: int) -> list[tuple[int, int]]:
    """Start/end (exclusive) of the ``p`` windows of PyTorch's adaptive average pooling over ``n`` positions."""
    return [((j * n) // p, -(-((j + 1) * n) // p)) for j in range(p)]


def _axis_table(n: int, p: int, ref: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-spaced relative coordinates along one axis between ``n`` query positions and ``p`` pooled key positions.

    The pooled key position is the mean of its pooling window, a multiple of 1/2, so ``2 * (query - key)`` is an exact
    integer: the distinct values are found in Python (no ``torch.unique``). Returns the transformed distinct values
    ``(U,)`` and, for every (query, key) pair, the index of its value ``(n, p)``.
    """
    d2 = [[2 * q - (s + e - 1) for s, e in _pool_bounds(n, p)] for q in range(n)]
    values = sorted({v for row in d2 for v in row})
    pos = {v: i for i, v in enumerate(values)}
    index = torch.tensor([[pos[v] for v in row] for row in d2], dtype=torch.long)
    coords = torch.tensor(values, dtype=torch.float32) / 2 / (ref - 1) * 8  # same float ops as the official code
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / torch.log2(torch.tensor(8, dtype=torch.float32))
    return coords, index


@lru_cache(maxsize=256)
def cpb_geometry(
    size: tuple[int, int], pool: tuple[int, int], ref: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relative coordinates and indices of the continuous position bias (cached per arguments).

    Args:
        size: Query map size (H, W).
        pool: Key map size (pH, pW) (adaptive-average-pooled from the query map; equal to ``size`` for full attention).
        ref: Per-stage pre-training map size used to normalise the coordinates (official ``pretrain_size // stride``).
        device: Where the tensors live.

    Returns:
        ``coords_h`` (Uh,) and ``coords_w`` (Uw,): the distinct log-spaced relative coordinates per axis; the official
        table of distinct (dh, dw) pairs is their product (row ``a * Uw + b`` = ``(coords_h[a], coords_w[b])``), because
        query/key rows and columns vary independently. ``index_h`` (H, pH) and ``index_w`` (W, pW), int64: the bias
        of query (y, x) and key (i, j) is ``table[index_h[y, i], index_w[x, j]]``.
    """
    with table_building():
        ch, ih = _axis_table(size[0], pool[0], ref[0])
        cw, iw = _axis_table(size[1], pool[1], ref[1])
        return ch.to(device), cw.to(device), ih.to(device), iw.to(device)


@lru_cache(maxsize=64)
def local_geometry(
    size: tuple[int, int], window: int, pool_len: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padding mask and length scale of the sliding window (cached per arguments), in the module's ``dtype``: a float32
    table would promote a half-precision model's attention to float32 (and fail at its output projection).

    Returns:
        ``mask`` (N, window**2): 0 where the window position lies inside the map, -inf outside (zero padding), in
        ``nn.Unfold`` order; ``scale`` (N, 1, 1): log(number of valid window positions + pooled length).
    """
    with table_building():
        valid = F.unfold(torch.ones(1, 1, *size), window, padding=window // 2)[0].t()  # (N, window**2)
        mask = torch.zeros_like(valid).masked_fill_(valid == 0, float("-inf"))
        scale = torch.log(valid.sum(-1) + pool_len).view(-1, 1, 1)
        return mask.to(device, dtype), scale.to(device, dtype)


@lru_cache(maxsize=64)
def _axis_bound(n: int, window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, window): +inf where the window position lies inside an axis of length n, -inf outside (zero padding)."""
    with table_building():
        pos = torch.arange(n)[:, None] + torch.arange(window)[None] - window // 2
        inside = (pos >= 0) & (pos < n)
        return torch.full(inside.shape, float("inf")).masked_fill_(~inside, float("-inf")).to(device, dtype)


def _window_bound(size: tuple[int, int], window: int, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, window**2) in ``nn.Unfold`` order: +inf where the window position lies inside the map, -inf outside;
    ``min(similarity, bound)`` masks the zero padding in graph modes. Built in the graph from the two axes' (H, ws)
    and (W, ws) bounds, anchored to the input: a stored (N, window**2) constant per block took 8 MB of a 1024 px file."""
    (H, W), ws = size, window
    if for_xnnpack():  # one constant (N, window**2) table: XNNPACK does not delegate the broadcasting unsqueezes
        return _cached(_window_bound_table, size, ws, x.device, dtype)
    rows = _anchored(_cached(_axis_bound, H, ws, x.device, dtype), x).reshape(H, ws)
    return _outer_bound(rows, _cached(_axis_bound, W, ws, x.device, dtype))


def _outer_bound(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(H, ws) and (W, ws) axis bounds -> (H * W, ws * ws), in ``nn.Unfold`` order: the smaller of the two."""
    return torch.minimum(rows[:, None, :, None], cols[None, :, None, :]).reshape(rows.shape[0] * cols.shape[0], -1)


@lru_cache(maxsize=64)
def _window_bound_table(size: tuple[int, int], window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`_window_bound` as one (N, window**2) table (for XNNPACK)."""
    with table_building():
        return _outer_bound(_axis_bound(size[0], window, device, dtype), _axis_bound(size[1], window, device, dtype))


@lru_cache(maxsize=64)
def _sink_block(shape: tuple[int, int], keys: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (..., rows, cols) tensor of zeros with ones in its last row's last ``keys`` columns (the sink keys of
    ``AggregatedAttention._sink_attention``)."""
    with table_building():
        t = torch.zeros(shape, device=device, dtype=dtype)
        t[..., -1, -keys:] = 1
        return t


@lru_cache(maxsize=256)
def _log_length(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with table_building():
        return torch.log(torch.tensor(float(n), device=device)).to(dtype)


def clear_caches() -> None:
    """Drop every cached size-dependent table (e.g. to free memory after inference at many sizes)."""
    cpb_geometry.cache_clear()
    local_geometry.cache_clear()
    _axis_bound.cache_clear()
    _window_bound_table.cache_clear()
    _sink_block.cache_clear()
    _axis_index.cache_clear()
    _sink_axis_index.cache_clear()
    _log_length.cache_clear()
    _WORKSPACE.__dict__.pop("buffers", None)


def _constant_for_xnnpack(owner: nn.Module, key: tuple, fn):
    """``fn()``, a value computed from weights only; for XNNPACK the constant recorded in the export's dry run."""
    return export_constant(owner, key, fn) if for_xnnpack() else fn()


def _on_cpu(device: torch.device) -> bool:
    """The one device decision: CPU code paths (cache-sized chunks, explicit softmax with autograd) or those of other
    devices (tests force the latter on the CPU by patching this; the list is in docs/precision.md)."""
    return device.type == "cpu"


def _cpb_mlp(
    fc1: nn.Linear, fc2: nn.Linear, coords_h: torch.Tensor, coords_w: torch.Tensor, budget: int | None = None
) -> torch.Tensor:
    """The bias MLP on every (dh, dw) pair of the product table: (Uh,), (Uw,) -> (heads, Uh, Uw).

    fc1 is linear in (dh, dw), so it is split per axis; the (Uh * Uw, 512) hidden layer is then built and reduced by fc2
    in slices of ``budget`` elements (default: a few MB on CPUs; the unsliced hidden layer is ~200 MB for stage 1 at
    640x640 and dominated the runtime).
    """
    w1 = fc1.weight  # (hidden, 2)
    a = coords_h.to(w1.dtype)[:, None] * w1[:, 0] + fc1.bias  # (Uh, hidden)
    b = coords_w.to(w1.dtype)[:, None] * w1[:, 1]  # (Uw, hidden)
    if budget is None:
        budget = 1 << 20 if _on_cpu(a.device) else 1 << 26  # cache-sized slices on CPUs; GPUs: bound memory only
    rows = max(1, budget // (b.shape[0] * b.shape[1]))
    out = [fc2((a[r : r + rows, None] + b).relu_()) for r in range(0, a.shape[0], rows)]  # (rows, Uw, heads) each
    return torch.cat(out, 0).permute(2, 0, 1).contiguous()  # (heads, Uh, Uw)


class _BiasCache:
    """Caches the bias-MLP output of one attention module for inference (eval mode, no grad, eager).

    The entry is keyed by the sizes, device and dtype and is valid only while the MLP weights are unchanged: a snapshot
    of them (a few thousand numbers) is compared exactly on each use, so in-place updates (optimizer, EMA,
    ``load_state_dict``) invalidate it.
    """

    def __init__(self):
        self.key, self.weights, self.value = None, None, None

    def __getstate__(self) -> dict:  # never pickled/deep-copied with the model (checkpoints, EMA copies)
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    @staticmethod
    def readable(module: nn.Module) -> bool:
        """Inference: eval mode and no autograd reaching the MLP weights (frozen weights count as inference)."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in module.cpb_fc1.parameters())
        return not (module.training or grad)

    def get(self, key: tuple, params: list[torch.Tensor]) -> torch.Tensor | None:
        if self.key != key:
            return None
        with warnings.catch_warnings():  # while tracing: the comparison is Python control flow, by design
            warnings.simplefilter("ignore")
            valid = all(torch.equal(p, q) for p, q in zip(params, self.weights))
        return self.value if valid else None

    def put(self, key: tuple, params: list[torch.Tensor], value: torch.Tensor) -> None:
        self.key, self.weights, self.value = key, [p.detach().clone() for p in params], value


def _bias_table(module: nn.Module, size, pool, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Continuous relative position bias of ``module`` (has cpb_fc1/cpb_fc2/pretrain_size) in gather form.

    Returns the table of distinct values (heads, Uh, Uw) and the indices ``index_h`` (H, pH), ``index_w`` (W, pW):
    the bias of query (y, x) and key (i, j) is ``table[:, index_h[y, i], index_w[x, j]]`` (see :func:`gather_bias`).
    """
    ch, cw, index_h, index_w = cpb_geometry(size, pool, module.pretrain_size, device)
    dtype = _autocast_dtype(device)
    params = [module.cpb_fc1.weight, module.cpb_fc1.bias, module.cpb_fc2.weight, module.cpb_fc2.bias]
    # the weights' dtype too: torch.equal finds a half copy equal to its float original, so after .half() then
    # .float() the half-precision table would be served to the float model
    key = (size, pool, device, dtype, module.cpb_fc2.weight.dtype)
    cache: _BiasCache = module.__dict__.setdefault("_bias_cache", _BiasCache())
    readable = _BiasCache.readable(module)  # eager inference (graph modes use graph_bias_table)
    t = cache.get(key, params) if readable else None
    if t is None:
        t = _cpb_mlp(module.cpb_fc1, module.cpb_fc2, ch, cw)
        if readable:
            cache.put(key, params, t)
    return t, index_h, index_w


def gather_bias(table: torch.Tensor, index_h: torch.Tensor, index_w: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
    """Bias of the queries in map rows ``y0:y1`` against every key: (heads, (y1 - y0) * W, pH * pW).

    Without autograd the rows of the table each query row needs are selected first (small), then gathered per key
    column with a small broadcast index, so no index as large as the output exists. With autograd a flat index of the
    chunk is used instead, so the backward pass scatters into the (heads, Uh * Uw) table directly.
    """
    heads, _, uw = table.shape
    r, (W, pw), ph = y1 - y0, index_w.shape, index_h.shape[1]
    if torch.is_grad_enabled() and table.requires_grad:
        flat = (index_h[y0:y1, None, :, None] * uw + index_w[None, :, None, :]).reshape(1, -1)
        return table.reshape(heads, -1).gather(1, flat.expand(heads, -1)).view(heads, r * W, ph * pw)
    rows = table.index_select(1, index_h[y0:y1].reshape(-1)).view(heads, r, 1, ph, uw)
    cols = index_w.view(1, 1, W, 1, pw).expand(heads, r, W, ph, pw)
    return rows.expand(heads, r, W, ph, uw).gather(-1, cols).view(heads, r * W, ph * pw)


def strided_bias(table: torch.Tensor, size: tuple[int, int], pool: tuple[int, int]) -> torch.Tensor | None:
    """The pooled-path bias as a strided view of the table, keys in reversed order: (heads, H, W, pH, pW), or None.

    When pooling is uniform (H = k_h * pH and W = k_w * pW) the distinct relative coordinates of query row y and the
    *reversed* pooled row i' = pH - 1 - i have index ``y + i' * k_h`` (likewise for columns), so the bias of every
    (query, reversed key) pair is ``table[:, y + i' * k_h, x + j' * k_w]``: a view, no gather. Attention does not
    depend on key order, so the caller reverses its pooled keys and values instead. Returns None for non-uniform
    pooling (sizes not divisible by the pooled size), where :func:`gather_bias` is used.
    """
    (H, W), (ph, pw) = size, pool
    if H % ph or W % pw:
        return None
    kh, kw = H // ph, W // pw
    heads, uh, uw = table.shape
    if (uh, uw) != (H + (ph - 1) * kh, W + (pw - 1) * kw):  # the count of distinct coordinates for uniform pooling
        return None
    t = table.contiguous()
    return t.as_strided((heads, H, W, ph, pw), (uh * uw, uw, 1, kh * uw, kw))


# ----------------------------------------------------------------------------------------------------------------------
# Graph modes (tracing for ONNX/OpenVINO/NCNN export, torch.compile): the same bias, computed as a graph can hold it
# ----------------------------------------------------------------------------------------------------------------------


def _axis_rows(n: int, p: int) -> tuple[int, int, int, list[tuple[int, int]]]:
    """Layout of one axis of the graph-mode bias table (pure Python, O(p): cheap to trace and to compile).

    Twice the relative coordinate of query ``q`` and pooled key ``j`` is ``2q - c_j`` (``c_j``: twice the centre of
    key j's pooling window), an integer. The table holds the values ``lo + step * u`` for ``u < size``: every value
    in range, or every other one when all ``c_j`` have the same parity (always with uniform pooling; the table then
    holds exactly the distinct values). For each key the queries 0..n-1 then read ``size`` entries that are
    contiguous in one parity half of the table: ``rows[j] = (parity, start)``, i.e. ``u = 2 * (start + q) + parity``
    for ``step == 1`` and ``u = start + q`` (parity 0) for ``step == 2``.

    Returns:
        ``(lo, step, size, rows)``.
    """
    centres = [s + e - 1 for s, e in _pool_bounds(n, p)]
    lo, hi = -max(centres), 2 * (n - 1) - min(centres)
    step = 2 if len({c % 2 for c in centres}) == 1 else 1
    rows = [((-c - lo) % 2, (-c - lo) // 2) if step == 1 else (0, (-c - lo) // 2) for c in centres]
    return lo, step, (hi - lo) // step + 1, rows


def _graph_coords(n: int, p: int, ref: int, device: torch.device) -> torch.Tensor:
    """Log-spaced relative coordinates of the graph-mode table along one axis, (size,) float32 (see
    :func:`_axis_rows`); the same float operations as :func:`_axis_table` on the same integers."""
    lo, step, size, _ = _axis_rows(n, p)
    v = torch.arange(size, device=device, dtype=torch.float32) * step + lo  # 2 * relative coordinate, exact
    coords = v / 2 / (ref - 1) * 8
    return torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)


def _anchored(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` plus a zero computed from the input at run time (x's first element times 0; x is finite here) while
    tracing; ``t`` otherwise.

    Graph converters (torch.onnx's constant folding, onnxslim, OpenVINO, pnnx) evaluate every node whose inputs are
    all constants and store the result. Some such results are much larger than their inputs: the per-pair bias
    (heads, N, P) gathered from the small table (stored per block, it took the 640 px file over 2 GB), or OpenVINO's
    rewrite of ``(q + query_embedding) * scale`` into ``q * scale + (query_embedding * scale)`` with a (N, C) product
    per block. Anchoring the small input to the image keeps such nodes run-time operations.
    """
    return t + x[:1, :1, :1] * 0 if _graph_mode() == "trace" else t


def graph_bias_table(module: nn.Module, size: tuple[int, int], pool: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """The bias MLP on the graph-mode table (:func:`_axis_rows` per axis): (1, heads, Rh, Rw), in x's dtype.

    Traced (exports): computed outside the trace from the current weights, so the graph holds the small table as a
    constant (tracing the MLP would let converters fold its (Rh * Rw, 512) hidden layer into a constant), and anchored
    to the input by :func:`_anchored`. Compiled: computed in the graph, differentiable like the eager table; for
    ExecuTorch the table recorded in the exporter's dry run (XNNPACK does not delegate the MLP's geometry).
    """

    def table(**kwargs) -> torch.Tensor:
        ch = _graph_coords(size[0], pool[0], module.pretrain_size[0], x.device)
        cw = _graph_coords(size[1], pool[1], module.pretrain_size[1], x.device)
        return _cpb_mlp(module.cpb_fc1, module.cpb_fc2, ch, cw, **kwargs).to(x.dtype).unsqueeze(0)

    if _graph_mode() != "trace":
        if export_format() == "executorch":  # torch.export for ExecuTorch: the table recorded in the dry run
            return export_constant(module, ("graph_bias_table", size, pool, x.dtype), lambda: table(budget=1 << 24))
        # (not for LiteRT: its converter folds the per-block bias gathered from a constant table, 131 MB at 640)
        return table(budget=1 << 24)
    with untraced(), torch.no_grad():
        t = table()
    return _anchored(t, x)


@lru_cache(maxsize=64)
def _axis_index(n: int, p: int, device: torch.device) -> torch.Tensor:
    """(n, p) int64: the slot in the graph-mode table axis (see :func:`_axis_rows`) of query q and pooled key j."""
    _, step, _, rows = _axis_rows(n, p)
    with table_building():
        parity, start = (torch.tensor(v, device=device) for v in zip(*rows))
        q = torch.arange(n, device=device)[:, None]
        return start + q if step == 2 else (start + q) * 2 + parity


@lru_cache(maxsize=64)
def _sink_axis_index(n: int, p: int, r: int, device: torch.device) -> torch.Tensor:
    """(n, p + 1) int64: :func:`_axis_index` with a last column ``r``, the slot of a zero appended to a table axis of
    length r (the sink block of :func:`graph_bias`)."""
    with table_building():
        index = _cached(_axis_index, n, p, device)
        return torch.cat([index, torch.full((n, 1), r, device=device, dtype=index.dtype)], 1)


def graph_bias(table: torch.Tensor, size: tuple[int, int], pool: tuple[int, int], sink: bool = False) -> torch.Tensor:
    """Pooled-path bias of every (query, key) pair from the graph-mode table: (1, heads, Rh, Rw) -> (1, heads, N, P),
    queries in (y, x) order, keys in **(j, i)** (column-major) order. ``sink`` appends pH zero columns (one more key
    column of the pooled map, whose bias is 0): (1, heads, N, P + pH).

    Two gathers with small per-axis indices, (H * pH) and (W * pW): the rows every query row needs (small), then per
    query column its keys' columns (contiguous runs of pH values). One pass over the output, and no index as large as
    the output exists.
    """
    (H, W), (ph, pw) = size, pool
    heads, rw = table.shape[1], table.shape[3]
    index_h = _cached(_axis_index, H, ph, table.device).reshape(-1)
    rows = table.index_select(2, index_h).reshape(1, heads, H, ph, rw).transpose(3, 4)  # (1, heads, H, Rw, pH)
    if sink:
        rows = F.pad(rows, (0, 0, 0, 1))  # (1, heads, H, Rw + 1, pH): a zero column
        index_w = _cached(_sink_axis_index, W, pw, rw, table.device).reshape(-1)
    else:
        index_w = _cached(_axis_index, W, pw, table.device).reshape(-1)
    return rows.index_select(3, index_w).reshape(1, heads, H * W, (pw + sink) * ph)


def _parity_halves(t: torch.Tensor, dim: int, step: int) -> list[torch.Tensor]:
    """[t] for ``step == 2``; else the even and odd entries of t along ``dim`` (padded to an even length), each
    contiguous in the result (a reshape and two selects, no strided slice: NCNN has none)."""
    if step == 2:
        return [t]
    n = t.shape[dim]
    if n % 2:
        t = torch.cat([t, t.narrow(dim, 0, 1)], dim)  # any value: the extra entry is never read
    t = t.unflatten(dim, ((n + 1) // 2, 2))
    return [t.select(dim + 1, 0), t.select(dim + 1, 1)]


def sliced_bias(table: torch.Tensor, size: tuple[int, int], pool: tuple[int, int], sink: bool = False) -> torch.Tensor:
    """:func:`graph_bias` without gathers, for NCNN (which has none): (1, heads, Rh, Rw) -> (1, heads, N, P), keys in
    (j, i) order; ``sink`` appends pH zero columns.

    The bias of key column j over all query columns is a contiguous slice of (one parity half of) the table's columns
    (see :func:`_axis_rows`), likewise for rows: pW + pH slices stacked. Every tensor has a leading batch dimension of
    1 and at most 4 more (what pnnx/NCNN handle: pnnx takes the first dimension as the batch).
    """
    (H, W), (ph, pw) = size, pool
    _, step_h, _, rows = _axis_rows(H, ph)
    _, step_w, _, cols = _axis_rows(W, pw)
    heads = table.shape[1]
    per_row_parity = []
    for half in _parity_halves(table, 2, step_h):  # (1, heads, Rh', Rw) per row parity
        halves = _parity_halves(half, 3, step_w)
        per_row_parity.append(torch.stack([halves[par][..., s : s + W] for par, s in cols], -1))  # (.., Rh', W, pW)
    out = [per_row_parity[par][:, :, s : s + H].reshape(1, heads, H * W, pw) for par, s in rows]
    out = torch.stack(out, -1).reshape(1, heads, H * W, pw * ph)
    return F.pad(out, (0, ph)) if sink else out


def pooled_bias(
    module: nn.Module, size: tuple[int, int], pool: tuple[int, int], x: torch.Tensor, sink: bool = False
) -> torch.Tensor:
    """Graph-mode pooled-path bias of ``module``: (1, heads, N, P) (+ pH zero columns with ``sink``), keys in (j, i)
    order (:func:`graph_bias`)."""
    table = graph_bias_table(module, size, pool, x)
    sliced = _graph_mode() == "trace" and tracing_for_ncnn()  # NCNN has no gather
    return (sliced_bias if sliced else graph_bias)(table, size, pool, sink)


def _graph_mode() -> str | None:
    """How the forward is being recorded: ``"compile"`` under dynamo (``torch.compile``, ``torch.export``),
    ``"trace"`` under the TorchScript tracer (``torch.jit.trace``, ``torch.onnx.export(dynamo=False)`` as Ultralytics
    calls it, and the OpenVINO and pnnx/NCNN converters, which trace first), None in eager runs."""
    if getattr(torch.compiler, "is_compiling", lambda: False)():
        return "compile"
    if tracing():
        return "trace"
    return None


def _building_graph() -> bool:
    """True while tracing, scripting, exporting to ONNX or compiling: no caches, views or data-dependent branches."""
    return _graph_mode() is not None


def _normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``F.normalize(x, dim=dim)`` in operations every converter knows (pnnx has no ``clamp_min``). Traced for MNN,
    the norm is a root of squares: MNN 3.6.1 reads ONNX's ``ReduceL2`` from opset 18 on (axes given as an input) as a
    reduction over every axis, which divided each query and key by the norm of the whole tensor."""
    if for_xnnpack() and dim in (-1, x.ndim - 1):
        norm = sum_last(x * x, keepdim=True).sqrt()
    elif _graph_mode() == "trace" and export_format() == "mnn":
        norm = (x * x).sum(dim, keepdim=True).sqrt()
    else:
        norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    return x / norm.clamp(min=1e-12)


def _cached(fn, *args):
    """``fn(*args)`` of an ``lru_cache``'d geometry function in graph modes. Traced: outside the trace, so the result
    is a constant whether or not it was cached before (a first trace would otherwise record the computation and a
    second read the cache: pnnx's trace check fails on the difference). Compiled: its uncached body (small tensor
    operations that compile into the graph; dynamo would warn about the cache wrapper), or for ``torch.export`` in an
    export to ExecuTorch or LiteRT the value recorded by the exporter's dry run (see ``export_constant``)."""
    if _graph_mode() == "compile":  # (torch.export for ExecuTorch/LiteRT: the value recorded in the dry run)
        return export_constant(fn, args, lambda: fn.__wrapped__(*args))
    with untraced():
        return export_constant(fn, args, lambda: fn(*args))


def _map_size(x: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a (B, C, H, W) map as Python ints, also while tracing (where sizes are tensors): the size-dependent
    tables are built in Python from them (a traced size would defeat their de-duplication, making the exported bias
    tables ~30x larger, and the cache lookups). Exported graphs are thus fixed to the traced size."""
    if not torch.jit.is_tracing():
        return int(x.shape[-2]), int(x.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return int(x.shape[-2]), int(x.shape[-1])


def _grad_or_graph(table: torch.Tensor) -> bool:
    """True when autograd reaches the bias table: use plain gathers then (no strided views). (Graph modes take
    ``_forward_graph`` and never get here.)"""
    return torch.is_grad_enabled() and table.requires_grad


def _fused_kernel(x: torch.Tensor, dropout: bool, table: torch.Tensor) -> bool:
    """True where attention goes through PyTorch's fused kernel (``scaled_dot_product_attention``): CPU inference, and
    on GPUs training too (their kernels differentiate the additive mask); never with attention dropout.
    On the CPU, training keeps the explicit softmax (as fast there, and it differentiates the strided bias view)."""
    if dropout:
        return False
    return not _on_cpu(x.device) or not _grad_or_graph(table)


def _query_rows(batch: int, heads: int, size: tuple[int, int], p: int, device: torch.device | None = None) -> int:
    """Map rows per chunk of the pooled attention, so its (B, h, rows * W, P) similarities stay cache-sized on the CPU;
    on GPUs chunks only bound memory (a few large kernels, not a Python loop over small chunks).
    """
    budget = _CHUNK_ELEMENTS if device is None or _on_cpu(device) else _CHUNK_ELEMENTS_GPU
    return max(1, min(size[0], budget // max(1, batch * heads * size[1] * p)))


_CHUNK_ELEMENTS = 1 << 22
_CHUNK_ELEMENTS_GPU = 1 << 27  # 512 MiB of float32 similarities


def _window_similarity(q_map: torch.Tensor, k_pad: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
    """Similarities of the queries in map rows ``y0:y1`` with their sliding-window keys: (B, h, n, L).

    q_map (B, H, W, h, d); k_pad (B, H + 2p, W + 2p, h, d) zero-padded keys; window side 2p + 1, L = (2p + 1)**2 in
    ``nn.Unfold`` order. Padded positions give 0 here (the caller's mask sets them to -inf).
    """
    B, _, W, h, _ = q_map.shape
    ws = k_pad.shape[2] - W + 1
    q = q_map[:, y0:y1]
    sims = [(q * k_pad[:, y0 + i : y1 + i, j : j + W]).sum(-1) for i in range(ws) for j in range(ws)]
    return torch.stack(sims, -1).view(B, -1, h, ws * ws).transpose(1, 2)


def _window_aggregate(w: torch.Tensor, v_pad: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
    """Sliding-window aggregation of the values for map rows ``y0:y1``: weights (B, h, n, L) -> (B, n, h, d).

    v_pad (B, H + 2p, W + 2p, h, d) zero-padded values.
    """
    B, h, n, L = w.shape
    ws, r = math.isqrt(L), y1 - y0
    W = v_pad.shape[2] - ws + 1
    w = w.transpose(1, 2).reshape(B, r, W, h, L, 1)
    out = w[..., 0, :] * v_pad[:, y0:y1, 0:W]
    for s in range(1, L):
        i, j = divmod(s, ws)
        term = v_pad[:, y0 + i : y1 + i, j : j + W]
        out = out + w[..., s, :] * term if _building_graph() else out.addcmul_(w[..., s, :], term)  # see addcmul
    return out.view(B, n, h, -1)


def _shared_softmax(a: torch.Tensor, v: torch.Tensor, local: torch.Tensor, drop: nn.Module | None):
    """One softmax over pooled (a, biased, (B, h, n, P); consumed) and local (B, h, n, L) similarities.

    Returns the pooled output (B, h, n, d) = softmax-weighted v (B, h, P, d) and the local weights (B, h, n, L). Shifted
    by each row's maximum (a detached constant); normalised after aggregating, with the weights before dropout.
    """
    shift = torch.maximum(a.detach().amax(-1, keepdim=True), local.detach().amax(-1, keepdim=True))
    e_pool, e_local = a.sub_(shift).exp_(), (local - shift).exp()
    inv_z = 1.0 / (e_pool.sum(-1, keepdim=True) + e_local.sum(-1, keepdim=True))  # (B, h, n, 1)
    if drop is not None:
        e_pool, e_local = drop(e_pool), drop(e_local)
    return (e_pool @ v).mul_(inv_z), e_local * inv_z


def _sink_keys(k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled keys/values (B, h, P, d) with the "sink" of :func:`_sink_softmax` appended: (B, h, P + 1, d + 1) each,
    in ``dtype`` (the kernel's).

    The sink key and value are the unit vector of the extra channel, which is 0 for the pooled keys and values.
    """
    P, d = k.shape[-2:]
    k, v = F.pad(k.to(dtype), (0, 1, 0, 1)), F.pad(v.to(dtype), (0, 1, 0, 1))
    k[..., P, d] = 1
    v[..., P, d] = 1
    return k, v


def _sink_softmax(q, k, v, local, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared local + pooled softmax with PyTorch's fused attention kernel (inference).

    q (B, h, n, d); k, v (B, h, P + 1, d + 1) from :func:`_sink_keys`; local (B, h, n, L) biased local similarities;
    mask (h, n, P + 1) in the dtype of k: the pooled-path bias, then 0 for the sink.
    Returns the pooled output (B, h, n, d) and the local weights (B, h, n, L), both normalised by the shared softmax.

    The local similarities enter as one extra "sink" key per query whose similarity is their log-sum-exp: it is the
    query's extra channel, met by the sink key (the unit vector of that channel). The sink value is the unit vector of
    the extra value channel, so the kernel's softmax over P + 1 keys gives the pooled output already divided by the
    shared normaliser Z and, in the extra channel, Z_local / Z, which turns softmax(local) into the local weights.
    """
    d = q.shape[-1]
    lse = torch.logsumexp(local, -1, keepdim=True)  # (B, h, n, 1)
    q = torch.cat([q.to(k.dtype), lse.to(k.dtype)], -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], scale=1.0)
    return out[..., :d], (local - lse).exp() * out[..., d:].to(local.dtype)


_WORKSPACE = threading.local()


def _mask_workspace(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable (heads, rows, P + 1) attention-mask buffer per shape, dtype and device (per thread), its last column
    (the sink's) zero; the other columns are undefined and written by the caller for every chunk.

    A fresh buffer per chunk would be page-faulted in again each time (the allocator returns large blocks to the OS),
    which cost about as much as filling it; one buffer per shape (one per stage) writes the strided sink column once.
    """
    key = (shape, dtype, device)
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None:
        with table_building():
            buf = torch.empty(shape, dtype=dtype, device=device)
            buf[..., -1] = 0
        buffers[key] = buf
    return buf


def _activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(x) for a freshly computed x: in place when it is a GELU and autograd is off (one large buffer fewer)."""
    if type(act) is nn.GELU and not (torch.is_grad_enabled() or _building_graph()):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``, or None."""
    try:
        return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    except (RuntimeError, AttributeError):  # device types without autocast (meta), old torch
        return None


def _bias_matmul(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bias + a @ b in one GEMM pass, accumulating into the freshly gathered ``bias`` (consumed).

    Shapes: (h, N, P) + (B, h, N, d) @ (B, h, d, P) -> (B, h, N, P), contiguous.
    """
    B, h, N, d = a.shape
    P = b.shape[-1]
    dt = _autocast_dtype(a.device) or torch.promote_types(a.dtype, b.dtype)
    base = bias.to(dt) if B == 1 else bias.to(dt).unsqueeze(0).expand(B, h, N, P).contiguous()
    out = base.view(B * h, N, P).baddbmm_(a.reshape(B * h, N, d).to(dt), b.reshape(B * h, d, P).to(dt))
    return out.view(B, h, N, P)


# ----------------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------------


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv + LayerNorm. (B, C, H, W) -> tokens (B, H/s * W/s, D), H/s, W/s.

    Args:
        patch_size: Conv kernel size (7 for the stem, 3 between stages); padding is ``patch_size // 2``.
        stride: Conv stride (4 for the stem, 2 between stages).
        in_chans: Input channels.
        embed_dim: Output channels D.
    """

    def __init__(self, patch_size: int = 7, stride: int = 4, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = _map_size(x)
        return self.norm(map_to_tokens(x)), H, W


class DWConv(nn.Module):
    """3x3 depthwise conv on tokens: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        y = self.dwconv(x.reshape(B, H, W, C).permute(0, 3, 1, 2))  # channels-last conv: no transposes of the map
        return y.permute(0, 2, 3, 1).reshape(B, H * W, C)


class ConvolutionalGLU(nn.Module):
    """Convolutional GLU channel mixer: fc1 -> (GELU(dwconv3x3(x1)) * x2) -> fc2. (B, N, C) -> (B, N, C).

    The hidden width is ``int(2 * hidden_features / 3)`` (the official rule keeping the FLOPs of an MLP of
    ``hidden_features``).
    """

    def __init__(
        self, in_features: int, hidden_features: int | None = None, out_features: int | None = None, drop: float = 0.0
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden = int(2 * (hidden_features or in_features) / 3)
        self.fc1 = nn.Linear(in_features, hidden * 2)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        # fc1 as two half GEMMs (same weights as the official ``fc1(x).chunk(2)``): both halves come out contiguous,
        # so the depthwise conv reads the first one as a channels-last map without a copy
        if for_xnnpack():  # one fc1 GEMM and two slices (XNNPACK delegates neither a split nor a sliced weight)
            x, v = split_sizes(self.fc1(x), [self.fc2.in_features] * 2)
            return self.drop(self.fc2(self.drop(self.act(self.dwconv(x, H, W)) * v)))
        (w1, w2), (b1, b2) = self.fc1.weight.chunk(2), self.fc1.bias.chunk(2)
        dropout = self.training and self.drop.p > 0
        if _on_cpu(x.device) and not (torch.is_grad_enabled() or _building_graph() or dropout):
            return self._forward_rows(x, H, W, w1, b1, w2, b2)  # cache-sized chunks pay on CPUs only
        x, v = F.linear(x, w1, b1), F.linear(x, w2, b2)
        x = self.dwconv(x, H, W)
        x = self.act(x) * v
        return self.drop(self.fc2(self.drop(x)))

    def _forward_rows(self, x, H, W, w1, b1, w2, b2) -> torch.Tensor:
        """Inference in chunks of map rows (plus one halo row each side for the 3x3 conv, whose outputs are dropped),
        so the (B, N, hidden) activations never exist whole: every buffer is cache-sized and reused, GELU and the gate
        run in place. Same result as the plain path."""
        B = x.shape[0]
        rows = max(1, min(H, _CHUNK_ELEMENTS_MLP // max(1, B * W * w1.shape[0])))
        out = []
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            a0, a1 = max(0, y0 - 1), min(H, y1 + 1)
            g = self.dwconv(F.linear(x[:, a0 * W : a1 * W], w1, b1), a1 - a0, W)[:, (y0 - a0) * W : (y1 - a0) * W]
            g = _activate(self.act, g).mul_(F.linear(x[:, y0 * W : y1 * W], w2, b2))
            out.append(self.fc2(g))
        return out[0] if len(out) == 1 else torch.cat(out, 1)


_CHUNK_ELEMENTS_MLP = 1 << 20  # hidden activations per chunk of ConvolutionalGLU in inference


def _init_temperature(num_heads: int) -> nn.Parameter:
    """softplus(temperature) starts at 1 / 0.24, one per head: (heads, 1, 1)."""
    return nn.Parameter(torch.log((torch.ones(num_heads, 1, 1) / 0.24).exp() - 1))


_DYNAMIC_REFUSAL = (
    "its exported graph is built for one input size (the position-bias tables, window masks and token reshapes are "
    "constants of that size), so dynamic=True would fail at run time on any other size (Ultralytics predicts dynamic "
    "models at each image's own letterboxed size, e.g. 640x480); export without dynamic=True instead, at the size "
    "you deploy (e.g. imgsz=640 or imgsz=480,640)"
)


class AggregatedAttention(nn.Module):
    """Aggregated (pixel-focused) attention of stages 1-3: (B, H*W, C) tokens -> (B, H*W, C).

    Args:
        dim: Channels C.
        num_heads: Heads (C must be divisible by it).
        window_size: Odd side of the query-centred sliding window (3).
        qkv_bias: Bias of the q/kv projections.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.
        sr_ratio: The pooled map is (H // sr_ratio, W // sr_ratio) (at least 1x1) unless ``pool_size`` is set.
        pool_size: Fixed pooled size (official ``fixed_pool_size``), clamped to the map size.
        pretrain_size: Map size (H, W) at pre-training, used to scale the relative coordinates (official
            ``pretrain_size // stride`` of the stage).
    """

    # onnx2tf 1.x (SavedModel, GraphDef, Edge TPU; measured 2026-12-02 at 64x96 and 640): "tf.norm: 'axis' must be
    # None, an integer, or a tuple" on ReduceL2; with the norm as a root of squares, "Dimensions must be equal, but
    # are 24 and 2" after its NCHW -> NHWC transposition.
    export_unsupported: ClassVar[dict[str, str]] = {
        **dict.fromkeys(
            ("saved_model", "pb", "edgetpu"),
            "onnx2tf (Ultralytics' TensorFlow converter) cannot convert TransNeXt's attention graph (it fails on "
            "ONNX's ReduceL2, and with that written out it mis-transposes the 4-d token tensors it takes for images); "
            "export to litert (TFLite, converted from PyTorch) instead",
        ),
        # the exported graph is built for the export size: its bias tables, masks and token reshapes are constants
        **dict.fromkeys(
            ("onnx", "engine", "openvino", "litert", "coreml"),
            lambda m, args: _DYNAMIC_REFUSAL if getattr(args, "dynamic", False) else None,
        ),
    }

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 3,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        pool_size: int | None = None,
        pretrain_size: int | Sequence[int] = 14,
    ):
        super().__init__()
        if dim % num_heads:
            raise PluginError(f"AggregatedAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if window_size % 2 != 1:
            raise PluginError(f"AggregatedAttention: window_size must be odd, got {window_size}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.sr_ratio, self.window_size, self.local_len = sr_ratio, window_size, window_size**2
        self.pool_size = pool_size
        self.pretrain_size = tuple(int(s) for s in to_2tuple(pretrain_size))
        if min(self.pretrain_size) < 2:
            raise PluginError(f"AggregatedAttention: pretrain_size {self.pretrain_size} must be at least 2")

        self.temperature = _init_temperature(num_heads)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # pooled path
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = LayerNorm(dim)
        self.act = nn.GELU()
        # MLP of the continuous relative position bias (pooled path)
        self.cpb_fc1 = nn.Linear(2, 512, bias=True)
        self.cpb_act = nn.ReLU(inplace=True)
        self.cpb_fc2 = nn.Linear(512, num_heads, bias=True)
        # learnable position bias of the local path
        self.relative_pos_bias_local = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.local_len), std=0.0004)
        )
        # query-learnable tokens + bias of the local path
        self.learnable_tokens = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_heads, self.head_dim, self.local_len), std=0.02)
        )
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))

    def pooled_size(self, H: int, W: int) -> tuple[int, int]:
        """Size of the pooled key/value map for an (H, W) query map."""
        if self.pool_size is not None:
            return min(self.pool_size, H), min(self.pool_size, W)
        return max(H // self.sr_ratio, 1), max(W // self.sr_ratio, 1)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if _building_graph() or for_xnnpack():  # (also the export's dry run: it records what torch.export reads)
            return self._forward_graph(x, H, W)
        B, N, C = x.shape
        h, d, ws = self.num_heads, self.head_dim, self.window_size
        pool = self.pooled_size(H, W)
        P = pool[0] * pool[1]
        mask, seq_scale = local_geometry((H, W), ws, P, x.device, self.q.weight.dtype)

        # queries: cosine (L2-normalised) + query embedding, scaled by softplus(temperature) and log(length)
        q_norm = F.normalize(self.q(x).view(B, N, h, d), dim=-1)  # (B, N, h, d)
        temp = F.softplus(self.temperature).view(h, 1)
        q_scaled = torch.add(q_norm, self.query_embedding.view(h, d)).mul_(temp * seq_scale)  # (B, N, h, d)

        # local keys/values: the zero-padded maps, read as nine shifted views
        kv = self.kv(x).view(B, H, W, 2, h, d)
        pad = ws // 2
        k_pad = F.pad(F.normalize(kv[:, :, :, 0], dim=-1), (0, 0, 0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, h, d)
        v_pad = F.pad(kv[:, :, :, 1], (0, 0, 0, 0, pad, pad, pad, pad))
        local_bias = self.relative_pos_bias_local.unsqueeze(1) + mask  # (h, N, L)

        # pooled keys/values: sr (1x1 conv as a linear layer) -> GELU -> adaptive avg pool -> LayerNorm -> kv
        x_ = _activate(self.act, F.linear(x, self.sr.weight.view(C, C), self.sr.bias))
        table, index_h, index_w = _bias_table(self, (H, W), pool, x.device)
        view = None if _grad_or_graph(table) else strided_bias(table, (H, W), pool)  # (h, H, W, pH, pW), keys reversed
        x_ = F.adaptive_avg_pool2d(x_.view(B, H, W, C).permute(0, 3, 1, 2), pool)
        if view is not None:
            x_ = x_.flip(-2, -1)
        kv_pool = self.kv(self.norm(map_to_tokens(x_))).view(B, P, 2, h, d).permute(2, 0, 3, 1, 4)
        k_pool, v_pool = F.normalize(kv_pool[0], dim=-1), kv_pool[1]  # (B, h, P, d)

        # One softmax over local + pooled similarities, then the local aggregation, in chunks of query rows: the pooled
        # similarities (B, h, N, P) are never materialised whole and every temporary of a chunk stays in cache. CPU
        # inference hands the softmax to PyTorch's fused attention kernel (_sink_softmax); otherwise (autograd, export,
        # other devices, attention dropout) it is computed explicitly, shifted by each row's maximum.
        drop = self.training and self.attn_drop.p > 0
        fused = _fused_kernel(x, drop, table)
        rows = _query_rows(B, h, (H, W), P, x.device)
        grad = _grad_or_graph(table)
        if fused:
            dt = _autocast_dtype(x.device) or q_scaled.dtype
            k_pool, v_pool = _sink_keys(k_pool, v_pool, dt)  # (B, h, P + 1, d + 1)
            # the fused kernel's additive mask, reused by every chunk: the bias of the chunk, then 0 for the sink
            # (with autograd a fresh one per chunk: a reused buffer would overwrite what backward needs)
            if not grad:
                mask_buf = _mask_workspace((h, rows * W, P + 1), dt, x.device)
        else:
            k_pool, v_pool = k_pool.transpose(-2, -1), v_pool.contiguous()  # (B, h, d, P): the faster GEMM layout
        q_map, qn_heads = q_scaled.view(B, H, W, h, d), q_norm.transpose(1, 2)
        out = []
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            n0, n1 = y0 * W, y1 * W
            local = _window_similarity(q_map, k_pad, y0, y1) + local_bias[:, n0:n1]  # (B, h, n, L)
            q = q_scaled[:, n0:n1].transpose(1, 2)  # (B, h, n, d)
            if fused and grad:
                m = F.pad(gather_bias(table, index_h, index_w, y0, y1).to(dt), (0, 1))
                x_pool, w_soft = _sink_softmax(q, k_pool, v_pool, local, m)
            elif fused:
                m = mask_buf[:, : n1 - n0]
                if view is None:
                    m[..., :P] = gather_bias(table, index_h, index_w, y0, y1)
                else:
                    m[..., :P].view(h, y1 - y0, W, *pool).copy_(view[:, y0:y1])
                x_pool, w_soft = _sink_softmax(q, k_pool, v_pool, local, m)
            else:
                if view is None:
                    a = _bias_matmul(gather_bias(table, index_h, index_w, y0, y1), q, k_pool)
                else:
                    a = q @ k_pool  # (B, h, n, P)
                    a.view(B, h, y1 - y0, W, *pool).add_(view[:, y0:y1])
                x_pool, w_soft = _shared_softmax(a, v_pool, local, self.attn_drop if drop else None)
            # local aggregation with query-learnable tokens + bias added to the attention weights
            w_local = qn_heads[:, :, n0:n1] @ self.learnable_tokens + self.learnable_bias + w_soft  # (B, h, n, L)
            x_local = _window_aggregate(w_local, v_pad, y0, y1)  # (B, n, h, d)
            out.append(x_local.add_(x_pool.transpose(1, 2)))
        x = out[0] if len(out) == 1 else torch.cat(out, 1)
        return self.proj_drop(self.proj(x.reshape(B, N, C)))

    def _forward_graph(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The forward while exporting or compiling: the same attention as plain operations on tensors of at most 4
        dimensions besides the batch (NCNN's limit), without chunks, caches, in-place updates or branches on the
        autograd state; the pooled-path bias comes from :func:`pooled_bias` (pooled keys in its (j, i) order), one
        softmax runs over [pooled | local] similarities."""
        B, N, C = x.shape
        h, d, ws = self.num_heads, self.head_dim, self.window_size
        pool = self.pooled_size(H, W)
        P, L = pool[0] * pool[1], self.local_len
        _, seq_scale = _cached(local_geometry, (H, W), ws, P, x.device, self.q.weight.dtype)
        bound = _window_bound((H, W), ws, x, self.q.weight.dtype)  # min(similarity, bound) masks the padding

        q_norm = _normalize(self.q(x).view(B, N, h, d), dim=-1)
        q_scaled = (q_norm + self.query_embedding.view(h, d)) * self._query_scale(seq_scale, x)  # (B, N, h, d)

        # keys/values of the tokens and of the pooled map (sr -> GELU -> adaptive average pool -> LayerNorm) from one
        # kv projection of both (two would store kv's weight twice in simplified ONNX files)
        sr = _constant_for_xnnpack(self, "sr_weight", lambda: self.sr.weight.view(C, C))  # (a 1x1 conv's weight)
        x_ = self.act(F.linear(x, sr, self.sr.bias))
        x_ = F.adaptive_avg_pool2d(x_.reshape(B, H, W, C).permute(0, 3, 1, 2), pool)  # (B, C, pH, pW)
        x_ = x_.transpose(2, 3).flatten(2).transpose(1, 2)  # (B, P, C), keys in (j, i) order as the bias
        kv, kv_pool = split_sizes(self.kv(torch.cat([x, self.norm(x_)], 1)), [N, P], 1)
        k, v = split_sizes(kv, [C, C])  # (B, N, C) each
        k_pool, v_pool = split_sizes(kv_pool, [C, C])  # (B, P, C) each

        # local: similarities with the nine shifted views of the zero-padded keys, (B, h, N, L)
        pad = ws // 2
        k_pad = F.pad(_normalize(k.reshape(B, N, h, d), dim=-1).reshape(B, H, W, C), (0, 0, pad, pad, pad, pad))
        v_pad = F.pad(v.reshape(B, H, W, C), (0, 0, pad, pad, pad, pad))  # (B, H + 2p, W + 2p, C)
        shifts = [(i, j) for i in range(ws) for j in range(ws)]
        local = [sum_last(q_scaled * k_pad[:, i : i + H, j : j + W].reshape(B, N, h, d), True) for i, j in shifts]
        local = torch.cat(local, -1).transpose(1, 2) + self.relative_pos_bias_local.view(h, 1, L)
        local = torch.minimum(local, bound)

        # pooled keys/values, (B, h, d, P) and (B, h, P, d)
        k_pool = _normalize(k_pool.reshape(B, P, h, d), dim=-1).permute(0, 2, 3, 1)
        v_pool = v_pool.reshape(B, P, h, d).transpose(1, 2)
        q = q_scaled.transpose(1, 2)  # (B, h, N, d)
        if self.training and self.attn_drop.p > 0:  # dropout on the weights: one softmax over [pooled | local]
            bias = pooled_bias(self, (H, W), pool, x)  # (1, h, N, P)
            pooled = batched_matmul(q, k_pool)
            attn = self.attn_drop(torch.cat([pooled + bias.to(pooled.dtype), local.to(pooled.dtype)], -1).softmax(-1))
            x_pool = attn[..., :P] @ v_pool.to(attn.dtype)  # (B, h, N, d)
            w_soft = attn[..., P:]
        else:  # the local similarities enter the pooled softmax as one "sink" key (see _sink_softmax): no (N, P + L)
            x_pool, w_soft = self._sink_attention(q, k_pool, v_pool, local, pooled_bias(self, (H, W), pool, x, True))

        # outputs: pooled values, and the local aggregation with query-learnable tokens + bias added to the weights
        w_local = w_soft + (batched_matmul(q_norm.transpose(1, 2), self.learnable_tokens) + self.learnable_bias)
        w_local = w_local.transpose(1, 2)  # (B, N, h, L)
        out = x_pool.transpose(1, 2)  # (B, N, h, d)
        for s, (i, j) in enumerate(shifts):
            out = out + w_local[..., s : s + 1] * v_pad[:, i : i + H, j : j + W].reshape(B, N, h, d)
        return self.proj_drop(self.proj(out.reshape(B, N, C)))

    def _query_scale(self, seq_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """softplus(temperature) times the length scale: (N, h, 1); a recorded constant for XNNPACK (its softplus is
        three undelegated operations)."""
        h = self.num_heads
        if for_xnnpack():
            return export_constant(
                self, ("query_scale", x.shape[1]), lambda: F.softplus(self.temperature).view(h, 1) * seq_scale
            )
        return F.softplus(self.temperature).view(h, 1) * _anchored(seq_scale, x)

    @staticmethod
    def _sink_attention(q, k_pool, v_pool, local, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """One softmax over pooled and local similarities in graph modes, with the local ones as "sink" keys.

        q (B, h, N, d); k_pool (B, h, d, P); v_pool (B, h, P, d); local (B, h, N, L) biased local similarities;
        bias (1, h, N, P + S) from ``pooled_bias(..., sink=True)``, its last S columns 0. Returns the pooled output
        (B, h, N, d) and the local weights (B, h, N, L).

        The query gets ``lse - log S`` (lse: the local log-sum-exp) as an extra channel, met by S sink keys (the unit
        vector of that channel), which together weigh Z_local; the sink values are the unit vector of an extra value
        channel, which thus returns Z_local / Z. The same numbers as a softmax over the concatenated [pooled | local]
        similarities, without writing an (N, P + L) copy of the (N, P) ones (one pass fewer over the largest tensor of
        exported graphs). S is the pooled height: the bias gathers whole key columns (see :func:`graph_bias`).
        """
        d, P = k_pool.shape[-2:]
        S = bias.shape[-1] - P
        m = local.max(local.ndim - 1, keepdim=True)[0] if for_xnnpack() else local.amax(-1, keepdim=True).detach()
        lse = m + torch.log(sum_last(torch.exp(local - m), True))  # (B, h, N, 1)
        dt = k_pool.dtype
        q = torch.cat([q.to(dt), (lse - math.log(S)).to(dt)], -1)  # (B, h, N, d + 1)
        B, h = k_pool.shape[:2]
        sink = _cached(_sink_block, (h, d + 1, S), S, k_pool.device, dt)  # (h, d + 1, S): ones in the extra channel
        sink = sink.reshape(1, h, d + 1, S) if B == 1 else sink.expand(B, h, d + 1, S)
        k = torch.cat([F.pad(k_pool, (0, 0, 0, 1)), sink], -1)  # (B, h, d + 1, P + S)
        v = torch.cat([F.pad(v_pool, (0, 1)), sink.transpose(-2, -1)], -2)  # (B, h, P + S, d + 1)
        sims = batched_matmul(q, k)
        out = batched_matmul((sims + bias.to(sims.dtype)).softmax(-1), v.to(sims.dtype))  # (B, h, N, d + 1)
        return out[..., :d], torch.exp(local - lse) * out[..., d:].to(local.dtype)

    def extra_repr(self) -> str:
        pool = f"pool_size={self.pool_size}" if self.pool_size is not None else f"sr_ratio={self.sr_ratio}"
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, {pool}"


class Attention(nn.Module):
    """Full multi-head self-attention of stage 4 (cosine + query embedding + continuous bias): (B, N, C) -> (B, N, C).

    Args:
        dim: Channels C.
        num_heads: Heads.
        qkv_bias: Bias of the qkv projection.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.
        pretrain_size: Map size at pre-training (official ``pretrain_size // 32``), scales the relative coordinates.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrain_size: int | Sequence[int] = 7,
    ):
        super().__init__()
        if dim % num_heads:
            raise PluginError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.pretrain_size = tuple(int(s) for s in to_2tuple(pretrain_size))
        if min(self.pretrain_size) < 2:
            raise PluginError(f"Attention: pretrain_size {self.pretrain_size} must be at least 2")
        self.temperature = _init_temperature(num_heads)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.query_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, 1, self.head_dim), std=0.02))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb_fc1 = nn.Linear(2, 512, bias=True)
        self.cpb_act = nn.ReLU(inplace=True)
        self.cpb_fc2 = nn.Linear(512, num_heads, bias=True)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if _building_graph() or for_xnnpack():  # (also the export's dry run: it records what torch.export reads)
            return self._forward_graph(x, H, W)
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        table, index_h, index_w = _bias_table(self, (H, W), (H, W), x.device)
        bias = gather_bias(table, index_h, index_w, 0, H)  # (h, N, N)
        scale = F.softplus(self.temperature) * _log_length(N, x.device, self.temperature.dtype)
        q, k = torch.add(F.normalize(q, dim=-1), self.query_embedding).mul_(scale), F.normalize(k, dim=-1)
        if _fused_kernel(x, self.training and self.attn_drop.p > 0, table):
            dt = _autocast_dtype(x.device) or q.dtype
            x = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=bias[None].to(dt), scale=1.0)
        else:
            attn = _bias_matmul(bias, q, k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))

    def _forward_graph(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The forward while exporting or compiling (see :meth:`AggregatedAttention._forward_graph`)."""
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = split_sizes(self.qkv(x), [C] * 3)  # (B, N, C) each
        q = q.reshape(B, N, h, d).transpose(1, 2)  # (B, h, N, d)
        k, v = (t.reshape(B, H, W, C).transpose(1, 2).reshape(B, N, h, d).transpose(1, 2) for t in (k, v))  # (x, y)
        length = _cached(_log_length, N, x.device, self.temperature.dtype)
        scale = _constant_for_xnnpack(self, ("scale", N), lambda: F.softplus(self.temperature) * length)
        q, k = (_normalize(q, dim=-1) + self.query_embedding) * scale, _normalize(k, dim=-1)
        bias = pooled_bias(self, (H, W), (H, W), x)  # (1, h, N, N), keys in (x, y) order as k and v
        sims = batched_matmul(q, k.transpose(-2, -1))
        attn = self.attn_drop((sims + bias.to(sims.dtype)).softmax(-1))
        return self.proj_drop(self.proj(batched_matmul(attn, v.to(attn.dtype)).transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """TransNeXt block on tokens: x + attn(norm1(x)), then x + ConvGLU(norm2(x)). (B, H*W, C) -> (B, H*W, C).

    ``sr_ratio == 1`` (and no ``pool_size``) selects full :class:`Attention` (stage 4), otherwise
    :class:`AggregatedAttention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        sr_ratio: int = 1,
        pool_size: int | None = None,
        pretrain_size: int | Sequence[int] = 14,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        if sr_ratio == 1 and pool_size is None:
            self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, pretrain_size)
        else:
            self.attn = AggregatedAttention(
                dim, num_heads, window_size, qkv_bias, attn_drop, drop, sr_ratio, pool_size, pretrain_size
            )
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = ConvolutionalGLU(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward_tokens(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))

    forward = forward_tokens


def _default_heads(c: int, head_dim: int = 32) -> int:
    h = max(c // head_dim, 1)
    while c % h:
        h -= 1
    return h


def _to_tokens(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 4:
        raise PluginError(f"{name} expects a (B, C, H, W) tensor, got shape {list(x.shape)}")
    return map_to_tokens(x)


@register_module(channels="same")
class TransNeXtBlock(Block):
    """TransNeXt block for YAML necks: Aggregated Attention + ConvGLU with norms and residuals. (B, C, H, W) -> same.

    The pooled key/value map adapts to the input: a fixed ``pool_size`` (clamped to the map size) or, with
    ``pool_size=None``, (H // sr_ratio, W // sr_ratio). Works at any input size.

    Args:
        c1: Channels (kept).
        num_heads: Heads; default ``c1 // 32`` rounded down to a divisor of c1.
        mlp_ratio: ConvGLU hidden ratio (before the 2/3 GLU rule).
        pool_size: Fixed pooled size, or None to pool by ``sr_ratio``.
        sr_ratio: Pooling ratio used when ``pool_size`` is None.
        window_size: Sliding-window side.
        pretrain_size: Map size that scales the relative coordinates of the position-bias MLP.
        drop_path: Stochastic depth rate.

    Examples:
        >>> m = TransNeXtBlock(64, num_heads=2)
        >>> m(torch.zeros(1, 64, 20, 28)).shape
        torch.Size([1, 64, 20, 28])
    """

    def __init__(
        self,
        c1: int,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        pool_size: int | None = 7,
        sr_ratio: int = 2,
        window_size: int = 3,
        pretrain_size: int = 14,
        drop_path: float = 0.0,
    ):
        num_heads = num_heads or _default_heads(c1)
        if c1 % num_heads:
            raise PluginError(
                f"TransNeXtBlock: channels {c1} are not divisible by num_heads {num_heads}; pick a "
                "divisor of the (width-scaled) channels or leave num_heads unset"
            )
        if pool_size is None and sr_ratio < 2:
            raise PluginError("TransNeXtBlock: use sr_ratio >= 2 or a pool_size (aggregated attention needs pooling)")
        super().__init__(
            c1,
            num_heads,
            window_size,
            mlp_ratio,
            drop_path=drop_path,
            sr_ratio=max(sr_ratio, 2),
            pool_size=pool_size,
            pretrain_size=pretrain_size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = _to_tokens(x, "TransNeXtBlock")
        H, W = _map_size(x)
        y = self.forward_tokens(t, H, W)
        return tokens_to_map(y, H, W)  # channels-last view


@register_module(channels="same")
class ConvGLU(nn.Module):
    """Convolutional GLU channel mixer for YAML necks: x + ConvGLU(LayerNorm(x)). (B, C, H, W) -> (B, C, H, W).

    Args:
        c1: Channels (kept).
        mlp_ratio: Hidden ratio before the 2/3 GLU rule (hidden = int(2/3 * c1 * mlp_ratio)).
        residual: Add the input (pre-norm residual block); False gives the bare mixer ``ConvGLU(x)``.
        drop_path: Stochastic depth rate of the residual branch.
    """

    def __init__(self, c1: int, mlp_ratio: float = 4.0, residual: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.residual = bool(residual)
        self.norm = LayerNorm(c1, eps=1e-6) if self.residual else nn.Identity()
        self.mlp = ConvolutionalGLU(c1, int(c1 * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = _to_tokens(x, "ConvGLU")
        H, W = _map_size(x)
        y = self.drop_path(self.mlp(self.norm(t), H, W))
        y = t + y if self.residual else y
        return tokens_to_map(y, H, W)  # channels-last view


@register_module(channels="scaled", repeat=True)
class C2fTransNeXt(CSPBlock):
    """C2f-style CSP block whose inner blocks are :class:`TransNeXtBlock`. (B, c1, H, W) -> (B, c2, H, W).

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of inner TransNeXt blocks (each on ``c2 * e`` channels).
        e: Hidden ratio of the CSP split.
        num_heads: Heads of the inner blocks (default ``(c2 * e) // 32`` rounded to a divisor).
        mlp_ratio: ConvGLU ratio of the inner blocks.
        pool_size: Fixed pooled size of the inner aggregated attention (None: pool by ``sr_ratio``).
        sr_ratio: Pooling ratio when ``pool_size`` is None.
        drop_path: Stochastic depth rate of the inner blocks.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        pool_size: int | None = 7,
        sr_ratio: int = 2,
        drop_path: float = 0.0,
    ):
        super().__init__(
            c1,
            c2,
            n,
            e,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            pool_size=pool_size,
            sr_ratio=sr_ratio,
            drop_path=drop_path,
        )

    def make_block(self, c: int, **kwargs: Any) -> nn.Module:
        return TransNeXtBlock(c, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------------------------------


@register_module(channels="backbone")
class TransNeXt(Backbone):
    """TransNeXt backbone (arXiv 2311.17132): list of 4 stage features (B, C_i, H/s, W/s), strides 4/8/16/32.

    Args:
        variant: ``micro``, ``tiny``, ``small`` or ``base``.
        weights: Optional official checkpoint (classification ``.pth``, ``{"model": state_dict}``) to load.
        num_classes: > 0 builds the official classifier (mean-pooled last stage -> ``head`` Linear).
        pretrain_size: Input size of pre-training (224 for the ImageNet-1K weights); scales the relative coordinates
            of the continuous position bias (official ``pretrain_size``).
        drop_path_rate: Stochastic depth, increasing linearly over all blocks.
        drop_rate: Dropout after the projections/ConvGLU (official ``drop_rate``).
        attn_drop_rate: Dropout on attention weights.
        fixed_pool_size: Pool the aggregated attention to a fixed size instead of (H/sr, W/sr) (official option).
        in_chans: Input channels.

    Examples:
        >>> m = TransNeXt("micro")
        >>> [f.shape[1] for f in m(torch.zeros(1, 3, 64, 96))]
        [48, 96, 192, 384]
    """

    family = "transnext"
    default_variant = "micro"
    scale_variants: ClassVar[dict[str, str]] = {"n": "micro", "s": "micro", "m": "tiny", "l": "small", "x": "base"}
    # learning-rate multiple in Ultralytics' trainer (integration.optim): from scratch on the embedded data, AdamW at
    # 0.002 (batch 4) leaves TransNeXt on a loss plateau; a quarter of it learns (README, "Why TransNeXt ...")
    lr_scale: ClassVar[float] = 0.25
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "micro": {"embed_dims": (48, 96, 192, 384), "num_heads": (2, 4, 8, 16), "depths": (2, 2, 15, 2)},
        "tiny": {"embed_dims": (72, 144, 288, 576), "num_heads": (3, 6, 12, 24), "depths": (2, 2, 15, 2)},
        "small": {"embed_dims": (72, 144, 288, 576), "num_heads": (3, 6, 12, 24), "depths": (5, 5, 22, 5)},
        "base": {"embed_dims": (96, 192, 384, 768), "num_heads": (4, 8, 16, 32), "depths": (5, 5, 23, 5)},
    }
    # shared by every variant (official): 3x3 windows in stages 1-3 and full attention in stage 4, ConvGLU ratios,
    # pooling ratios, LayerNorm eps 1e-6 in the blocks, qkv bias
    common: ClassVar[dict[str, Any]] = {
        "window_size": (3, 3, 3, None),
        "mlp_ratios": (8, 8, 4, 4),
        "sr_ratios": (8, 4, 2, 1),
        "qkv_bias": True,
        "norm_eps": 1e-6,
        "patch_size": 4,
    }

    def __init__(
        self,
        variant: str = "micro",
        weights: str | None = None,
        *,
        num_classes: int = 0,
        pretrain_size: int | Sequence[int] = 224,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        fixed_pool_size: int | None = None,
        in_chans: int = 3,
    ):
        super().__init__(variant)
        cfg = {**self.common, **self.config(self.variant)}
        self.pretrain_size = tuple(int(s) for s in to_2tuple(pretrain_size))
        if min(self.pretrain_size) < 64:
            raise PluginError(
                f"TransNeXt: pretrain_size {pretrain_size} is too small (need >= 64: stage 4 divides "
                "it by 32); use the input size of pre-training, 224 for the official weights"
            )
        self.in_chans, self.num_stages = in_chans, 4
        dims, ps = cfg["embed_dims"], cfg["patch_size"]
        with torch.device("cpu"):  # plain numbers, also when building under a meta/cuda default device
            dpr = drop_path_rates(drop_path_rate, list(cfg["depths"]))
        for i in range(self.num_stages):
            stride = 2 ** (i + 2)
            ref = tuple(s // stride for s in self.pretrain_size)
            embed = OverlapPatchEmbed(
                ps * 2 - 1 if i == 0 else 3, ps if i == 0 else 2, in_chans if i == 0 else dims[i - 1], dims[i]
            )
            blocks = nn.ModuleList(
                Block(
                    dims[i],
                    cfg["num_heads"][i],
                    cfg["window_size"][i] or 3,
                    cfg["mlp_ratios"][i],
                    cfg["qkv_bias"],
                    drop_rate,
                    attn_drop_rate,
                    dpr[i][j],
                    cfg["norm_eps"],
                    cfg["sr_ratios"][i],
                    fixed_pool_size if cfg["sr_ratios"][i] > 1 else None,
                    ref,
                )
                for j in range(cfg["depths"][i])
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", LayerNorm(dims[i], eps=cfg["norm_eps"]))
            self.feature_info.append(FeatureInfo(dims[i], stride, f"norm{i + 1}"))
        self.num_classes = int(num_classes)
        if self.num_classes > 0:
            self.head = nn.Linear(dims[3], self.num_classes)
        self.apply(self._init_weights)
        self.check_feature_info()
        if weights:
            self.load_weights(weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16), (B, C4, H/32, W/32)].

        Sizes are ceil-divided (convs with padding), so any H, W >= 1 works.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise PluginError(f"TransNeXt expects a (B, {self.in_chans}, H, W) image tensor, got {list(x.shape)}")
        x, outs = channels_last(x), []  # the stride-4 conv's output is then already in token order
        for i in range(self.num_stages):
            x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            x = tokens_to_map(getattr(self, f"norm{i + 1}")(x), H, W)  # channels-last view, no copy
            outs.append(x)
        return outs

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Official classifier: mean of the last (normalised) stage over positions -> ``head``. -> (B, num_classes)."""
        if self.num_classes <= 0:
            raise PluginError("TransNeXt was built without a classifier; pass num_classes=1000 to build the head")
        return self.head(features[-1].mean(dim=(2, 3)))

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, model)


# official buffers that this implementation recomputes per input size (never loaded)
_RECOMPUTED = ("relative_pos_index", "relative_coords_table", "seq_length_scale", "padding_mask")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official TransNeXt checkpoint to :class:`TransNeXt` keys (pure).

    * Names are kept (they are the official ones); a ``backbone.`` prefix (mmdet/mmseg checkpoints) is stripped and
      their neck/head keys dropped.
    * Dropped: official size-dependent buffers that are recomputed per input size here (``relative_pos_index{i}``,
      ``relative_coords_table{i}``, ``*.attn.seq_length_scale``, ``*.attn.padding_mask``; not persistent in the
      released files, but present in some re-saved ones) and the classifier ``head.*`` when the model has no head.
    """
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    has_head = getattr(model, "num_classes", 0) > 0
    out = {}
    for k, v in state_dict.items():
        if k.split(".")[-1].rstrip("0123456789") in _RECOMPUTED:
            continue
        if k.startswith("head.") and not has_head:
            continue
        out[k] = v
    return out


__safe_globals__ = (_BiasCache,)  # plain data pickled with models: allowed under ULTRALYTICS_SAFE_LOAD=1
