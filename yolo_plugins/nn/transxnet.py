"""TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer (Lou et al., arXiv 2310.19380).

A hybrid CNN-Transformer with four stages (7x7 stride-4 stem, 3x3 stride-2 downsamplings, each Conv-BN). Every block
is ``x + DPE(x)`` (7x7 depthwise positional encoding), ``x + LayerScale(D-Mixer(GN(x)))`` and
``x + LayerScale(MS-FFN(GN(x)))`` with stochastic depth. The D-Mixer splits the channels in halves: one half goes to
IDConv (input-dependent depthwise conv: G static KxK kernels mixed per sample by a softmax over G of attention maps
pooled from the input), the other to OSRA (spatial-reduction attention whose keys/values come from an overlapping
depthwise reduction, kernel = stride + 3, refined by a 3x3 depthwise conv, with a learnable relative position bias
resized bicubically to the input); the concatenation goes through the STE (3x3 depthwise + squeeze/expand 1x1s with a
residual). The MS-FFN runs depthwise 1/3/5/7 convs on channel quarters of its hidden layer.

Behaviour, parameter names and shapes follow the official LMMMEng/TransXNet (Apache-2.0) ``models/transxnet.py``: the
network is ``patch_embed`` plus a ``network`` ModuleList (``network.0/2/4/6`` the stages' blocks, ``network.1/3/5`` the
downsamplings), the relative position encodings are ``relative_pos_enc.0-3`` (sized for 224x224 input), mmcv's
ConvModule parts are named ``conv``/``bn``/``activate``, the dense-prediction (``fork_feat``) output norms are
``norm0/2/4/6`` and the classifier is ``classifier.0`` (GroupNorm) / ``classifier.2`` (1x1 conv), so the official
ImageNet checkpoints (``{"state_dict": ...}`` / ``{"model": ...}``) load unchanged.

Speed (same outputs up to float rounding, tested against ``tests/oracles/transxnet_naive.py``): the backbone runs
channels-last (oneDNN's depthwise convs are several times faster so, and heads are views of the maps); each stage's
relative position encoding is resized once per forward instead of once per block, and under no_grad/inference_mode
the resized bias is cached per (size, device, dtype) and recomputed when the parameter changes; OSRA goes through
PyTorch's fused attention (``scaled_dot_product_attention`` with the bias as additive mask: no N x M logits in
memory); depthwise 1x1 convs run as per-channel affines; residuals around depthwise convs are folded into their
kernels; in inference the MS-FFN's four depthwise convs run as one (kernels zero-padded to 7x7), its hidden
activations are updated in place, and the BatchNorms around the 1x1 convs of the STE and MS-FFN are folded into those
convs (computed on the fly, the parameters are untouched). ``scripts/speed_backbones.py --oracle`` times the naive and
optimised paths.

ONNX (opset 17): the traced graph uses pooling matrices for IDConv's adaptive pooling (ONNX cannot pool to 7x7 from
sizes 7 does not divide) and fixes the input and batch size (IDConv's per-sample kernels run as one conv with B*C groups).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, ClassVar, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PluginError
from .backbone import Backbone, FeatureInfo
from .layers import (
    CSPBlock,
    DropPath,
    addcmul,
    channels_last,
    drop_path_rates,
    export_constant,
    export_format,
    export_is_dynamic,
    map_to_tokens,
    table_building,
    tracing,
    tracing_for_ncnn,
)
from .registry import register_module

__all__ = [
    "MSFFN",
    "OSRA",
    "BatchNorm2d",
    "C2fTransXNet",
    "ConvNormAct",
    "DMixer",
    "IDConv",
    "LayerScale",
    "MultiScaleDWConv",
    "PatchEmbed",
    "TransXNet",
    "TransXNetBlock",
    "resize_pos_enc",
]

PosEnc = Optional[Union[torch.Tensor, Callable[[int, int], torch.Tensor]]]


def _autocast(device: torch.device) -> bool:
    """Autocast is on for ``device`` (False for device types without autocast, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as a per-channel (scale, shift)."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


def _fold_1x1(conv: nn.Conv2d, pre: nn.BatchNorm2d | None = None, post: nn.BatchNorm2d | None = None):
    """Weight and bias of ``post(conv(pre(x)))`` for a 1x1 conv between inference BatchNorms (exact, no padding)."""
    w = conv.weight.flatten(1)
    b = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    if pre is not None:
        s, t = _bn_affine(pre)
        b = b + w @ t
        w = w * s
    if post is not None:
        s, t = _bn_affine(post)
        w = w * s[:, None]
        b = b * s + t
    return w[:, :, None, None], b


def _dw_plus_identity(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x) + x`` for a stride-1 depthwise conv as one conv (identity added to the kernel centre).

    In half precision (or autocast) the kernel would be rounded with the identity in it, so there the sum is computed
    as written.
    """
    if _autocast(x.device) or x.dtype not in (torch.float32, torch.float64) or x.dtype != conv.weight.dtype:
        return _dwconv(conv, x) + x
    k = conv.kernel_size[0]

    def kernel() -> torch.Tensor:
        eye = torch.zeros_like(conv.weight[:1, :1])
        eye[..., k // 2, k // 2] = 1
        return conv.weight + eye

    w = export_constant(conv, "plus_identity", kernel)
    if k == 1:
        return addcmul(conv.bias.reshape(1, -1, 1, 1), x, w.reshape(1, -1, 1, 1))
    return F.conv2d(x, w, conv.bias, 1, k // 2, groups=conv.groups)


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; under ``torch.export`` (ExecuTorch, LiteRT) written out with the variance of the centred values:
    ExecuTorch's portable ``native_group_norm`` differed from PyTorch by 2.8e-4 of the largest value on a stage-1
    map at 640 (1.2 M values per group; this form: 2.6e-6). With it (and the position tables of the same change)
    yolov8n-transxnet's boxes at 640 came from 0.40 px to 7.6e-3 px of PyTorch's."""
    if not torch.compiler.is_exporting():
        return norm(x)
    B, C = x.shape[:2]
    t = x.reshape(B, norm.num_groups, C // norm.num_groups, -1)  # means per channel, then per group: short sums

    def mean(v: torch.Tensor) -> torch.Tensor:
        return v.mean(-1, keepdim=True).mean(-2, keepdim=True)

    d = t - mean(t)
    y = (d * torch.rsqrt(mean(d * d) + norm.eps)).reshape(x.shape)
    if norm.weight is None:
        return y
    return y * norm.weight.reshape(1, -1, 1, 1) + norm.bias.reshape(1, -1, 1, 1)


def resize_pos_enc(enc: torch.Tensor, nq: int, nk: int) -> torch.Tensor:
    """Resize a relative position encoding (1, heads, Nq0, Nk0) -> (1, heads, nq, nk), bicubic as the official code."""
    if enc.shape[-2] == nq and enc.shape[-1] == nk:
        return enc
    return F.interpolate(enc, size=(nq, nk), mode="bicubic", align_corners=False)


@lru_cache(maxsize=32)
def _periodic_plan(n_in: int, n_out: int, budget: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bicubic resize of an axis n_in -> n_out as a small matrix over periodic windows, or None if that matrix would
    hold more than ``budget`` values.

    With g = gcd(n_in, n_out), p = n_in / g and q = n_out / g, output rows j * q + r (block j) read input rows
    p * j + base + c (c < width) with weights ``A[r, c]`` that do not depend on j (the source position advances by
    exactly p per block). ``A`` (q, width) is read off PyTorch's own bicubic resize of an identity (a middle block of a
    virtual axis, clear of the borders); the borders are handled by clamping the gathered row indices, which is what
    PyTorch's bounded access does. Returns ``A`` (float64) and the row ``index`` (g * width,) int64.
    """
    g = math.gcd(n_in, n_out)
    p, q = n_in // g, n_out // g
    if q * (p + 4) > budget:  # no short period: the matrix would be as large as what it replaces
        return None
    m = 4 // p + 2  # blocks on each side of the middle one: its window (width <= p + 4) stays inside the virtual axis
    with table_building():
        eye = torch.eye(p * (2 * m + 1), dtype=torch.float64)[None, None]
        e = F.interpolate(eye, size=(q * (2 * m + 1), eye.shape[-1]), mode="bicubic", align_corners=False)[0, 0]
        rows = e[q * m : q * (m + 1)]  # (q, virtual length)
        cols = rows.abs().sum(0).nonzero().flatten()
        lo, hi = int(cols[0]), int(cols[-1])
        A, base, width = rows[:, lo : hi + 1].contiguous(), lo - p * m, hi - lo + 1
        index = (torch.arange(g)[:, None] * p + base + torch.arange(width)[None]).clamp_(0, n_in - 1).flatten()
        return A, index


def graph_resize_pos_enc(enc: torch.Tensor, nq: int, nk: int, anchor: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`resize_pos_enc` for exported graphs, computed at run time from the small table in two small products:
    (1, heads, Nq0, Nk0) -> (1, heads, nq, nk).

    Resized once at export, the (heads, nq, nk) tables would be stored in the file: 77 MB per model at 640 px and
    500 MB at 1024 for TransXNet-T (the stock graph runtimes' bicubic resize takes seconds instead). Along the keys the
    resize is a product with an (Nk0, nk) matrix; along the queries with :func:`_periodic_plan`'s (q, width) matrix
    over gathered windows of rows. ``anchor`` (a tensor of the input) keeps converters from folding the result into a
    constant. Falls back to :func:`resize_pos_enc` where the query axis has no short period, for NCNN (no gather) and
    in ``dynamic=True`` exports (the plan is fixed to one size; the runtime's own resize works at any).
    """
    _, h, q0, k0 = enc.shape
    if (q0, k0) == (nq, nk):
        return enc
    if tracing_for_ncnn() or export_is_dynamic():  # no gather in NCNN; a dynamic graph resizes at any size
        return resize_pos_enc(enc, nq, nk)
    operands = resize_operands(enc, nq, nk)
    if operands is None:
        return resize_pos_enc(enc, nq, nk)
    keys, A, index = operands
    if anchor is not None:
        enc = enc + anchor.reshape(-1)[:1].reshape(1, 1, 1, 1).to(enc.dtype) * 0
    u = (enc @ keys).index_select(2, index)  # (1, h, g * width, nk)
    width = A.shape[1]
    out = A @ u.reshape(1, -1, width, nk)  # (1, h * g, q, nk)
    return out.reshape(1, h, nq, nk)


def resize_operands(enc: torch.Tensor, nq: int, nk: int) -> tuple[torch.Tensor, ...] | None:
    """(keys (Nk0, nk), A (q, width), index) of :func:`graph_resize_pos_enc`, constants of the sizes; None where the
    query axis has no short period. Under ``torch.export`` only the values an Ultralytics exporter's dry run recorded
    (:func:`export_constant`; building them there would cache fake tensors): None without."""
    _, _, q0, k0 = enc.shape

    def build() -> tuple[torch.Tensor, ...] | None:
        if torch.compiler.is_exporting():
            return None
        plan = _periodic_plan(q0, nq, nq * nk // 8)
        if plan is None:
            return None
        with table_building():
            eye = torch.eye(k0, dtype=torch.float64)[None, None]
            keys = F.interpolate(eye, size=(k0, nk), mode="bicubic", align_corners=False)[0, 0]  # (Nk0, nk)
            return keys.to(enc.device, enc.dtype), plan[0].to(enc.device, enc.dtype), plan[1].to(enc.device)

    return export_constant(resize_operands, (q0, k0, nq, nk, enc.device, enc.dtype), build)


class _ResizeCache:
    """Small LRU of resized position encodings for inference; never pickled or deep-copied (Ultralytics EMA/ckpt)."""

    def __init__(self, maxsize: int = 8):
        self.maxsize = maxsize
        self.store: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict) -> None:
        self.maxsize = state["maxsize"]
        self.store = OrderedDict()

    def __deepcopy__(self, memo: dict) -> _ResizeCache:
        return _ResizeCache(self.maxsize)

    @staticmethod
    def cacheable(enc: torch.Tensor) -> bool:
        """True under no_grad/inference_mode when no graph is being traced, exported or compiled.

        With gradients enabled nothing is cached, even for a frozen table: a tensor cached under inference_mode
        (Ultralytics' validation) must never enter an autograd graph.
        """
        return not (
            torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
        )

    def resize(self, enc: torch.Tensor, nq: int, nk: int, tag: Any = None) -> torch.Tensor:
        """``resize_pos_enc(enc, nq, nk)``, served from the cache while ``enc`` is unchanged and no grad is needed."""
        if (enc.shape[-2] == nq and enc.shape[-1] == nk) or not self.cacheable(enc):
            return resize_pos_enc(enc, nq, nk)
        key = (
            tag,
            nq,
            nk,
            enc.device,
            enc.dtype,
            enc.data_ptr(),
            enc._version,
            _autocast(enc.device),
            torch.is_inference_mode_enabled(),
        )
        out = self.store.get(key)
        if out is None:
            out = resize_pos_enc(enc, nq, nk)
            self.store = OrderedDict((k, v) for k, v in self.store.items() if k[:3] != key[:3])  # stale versions
            self.store[key] = out
            while len(self.store) > self.maxsize:
                self.store.popitem(last=False)
        else:
            self.store.move_to_end(key)
        return out

    def clear(self) -> None:
        self.store.clear()


# a resized table without a short-period plan enters a torch.export program as a constant up to this many values
# (16 MB; TransXNet-T's last stage at 640: 1.3 M); larger ones are resized at run time
_CONSTANT_TABLE_MAX = 1 << 22


class _StagePosEnc:
    """Resolves a stage's shared relative position encoding once per forward for all its blocks (in exported graphs
    with :func:`graph_resize_pos_enc`, anchored to ``anchor``, a tensor of the input). ``owner`` is the module that
    holds the table (``tag`` tells its tables apart)."""

    def __init__(
        self, enc: torch.Tensor, cache: _ResizeCache, tag: Any, anchor: torch.Tensor | None = None, owner: Any = None
    ):
        self.enc, self.cache, self.tag, self.anchor, self.owner = enc, cache, tag, anchor, owner
        self.value: torch.Tensor | None = None

    def __call__(self, nq: int, nk: int) -> torch.Tensor:
        v = self.value
        if v is None or v.shape[-2] != nq or v.shape[-1] != nk:
            if tracing():
                v = graph_resize_pos_enc(self.enc, nq, nk, self.anchor)
            elif torch.compiler.is_exporting() or (export_format() is not None and not export_is_dynamic()):
                v = self._exported(nq, nk)  # torch.export, and the exporter's dry run that records its constants
            else:
                v = self.cache.resize(self.enc, nq, nk, self.tag)
            self.value = v
        return v

    def _exported(self, nq: int, nk: int) -> torch.Tensor:
        """For ``torch.export`` (ExecuTorch, LiteRT): :func:`graph_resize_pos_enc` with constant operands; where the
        query axis has no short period, the resized table itself as a constant recorded in the exporter's dry run
        (TransXNet-T's last stage at 640, a 7x7 table to 20x20 queries: ExecuTorch ran the bicubic resize as
        gathers, 1.1 s per block)."""
        if resize_operands(self.enc, nq, nk) is not None or self.owner is None:
            return graph_resize_pos_enc(self.enc, nq, nk)
        if self.enc.shape[1] * nq * nk > _CONSTANT_TABLE_MAX:
            return resize_pos_enc(self.enc, nq, nk)
        return export_constant(self.owner, ("pos_enc", self.tag, nq, nk), lambda: resize_pos_enc(self.enc, nq, nk))


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also trains on batches with a single value per channel.

    Batch 1 with a 1x1 map (IDConv's global-context branch, OSRA's reduced keys of a tiny input) has no batch
    variance; PyTorch (and the official code) then raises. Such a batch is normalised with the running statistics
    (and does not update them). Every other case is plain BatchNorm; parameters and buffers are the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ConvNormAct(nn.Module):
    """Conv2d, BatchNorm2d, optional GELU (children ``conv``/``bn``/``activate`` as mmcv's ConvModule).

    Shapes: (B, c1, H, W) -> (B, c2, H', W'). The conv has no bias (mmcv's ``bias='auto'`` with a norm).
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, g: int = 1, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, groups=g, bias=False)
        self.bn = BatchNorm2d(c2)
        if act:
            self.activate = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if c.kernel_size == (1, 1) and c.groups == c.in_channels == c.out_channels > 1:
            x = x * c.weight.reshape(1, -1, 1, 1)  # a depthwise 1x1 conv is a per-channel scale (no slow grouped path)
        else:
            x = c(x)
        x = self.bn(x)
        return self.activate(x) if hasattr(self, "activate") else x


class PatchEmbed(nn.Module):
    """Overlapping patch embedding, Conv-BN: (B, c1, H, W) -> (B, c2, H/stride, W/stride) (ceil-like for odd sizes)."""

    def __init__(self, c1: int, c2: int, patch_size: int = 3, stride: int = 2, padding: int = 1):
        super().__init__()
        self.proj = ConvNormAct(c1, c2, patch_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OSRA(nn.Module):
    """Overlapping Spatial Reduction Attention (official ``Attention``): (B, C, H, W) -> (B, C, H, W).

    Queries from a 1x1 conv of every position; keys/values from a 1x1 conv of the reduced map ``LR(sr(x)) + sr(x)``,
    where ``sr`` is a depthwise Conv-BN-GELU with kernel ``sr_ratio + 3`` and stride ``sr_ratio`` plus a depthwise
    1x1 Conv-BN (identity when ``sr_ratio == 1``) and ``LR`` a 3x3 depthwise conv. A relative position bias
    (1, heads, Nq0, Nk0), resized bicubically to (H*W, h*w), is added to the attention logits.

    Args:
        dim: Channels.
        num_heads: Attention heads (``dim`` must be divisible by it).
        qk_scale: Logit scale, default ``head_dim ** -0.5``.
        attn_drop: Dropout on the attention map.
        sr_ratio: Spatial reduction stride of keys/values.
    """

    def __init__(
        self, dim: int, num_heads: int = 1, qk_scale: float | None = None, attn_drop: float = 0.0, sr_ratio: int = 1
    ):
        super().__init__()
        if dim % num_heads:
            raise PluginError(f"OSRA: dim {dim} is not divisible by num_heads {num_heads}; pick heads dividing it")
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim * 2, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = nn.Sequential(
                ConvNormAct(dim, dim, k, sr_ratio, k // 2, g=dim, act=True),
                ConvNormAct(dim, dim, 1, g=dim),
            )
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, relative_pos_enc: PosEnc = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); ``relative_pos_enc`` a tensor (resized if needed) or a resolver (nq, nk)."""
        B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        kv = _dw_plus_identity(self.local_conv, self.sr(x))  # LR(kv) + kv
        if tracing():  # the same heads from 4-d reshapes of the NCHW maps (NCNN has no 5-d unflatten)
            q = self.q(x).reshape(B, h, d, H * W).transpose(-2, -1)
            k, v = (t.reshape(B, h, d, -1).transpose(-2, -1) for t in self.kv(kv).chunk(2, dim=1))
        else:  # heads as views of the (channels-last) maps: (B, h, N, d) queries, (B, h, M, d) keys and values
            q = map_to_tokens(self.q(x)).unflatten(2, (h, d)).transpose(1, 2)
            k, v = map_to_tokens(self.kv(kv)).unflatten(2, (2, h, d)).permute(2, 0, 3, 1, 4)
        N, M = q.shape[-2], k.shape[-2]
        bias = None
        if relative_pos_enc is not None:
            bias = relative_pos_enc(N, M) if callable(relative_pos_enc) else resize_pos_enc(relative_pos_enc, N, M)
            if bias.dtype != q.dtype:  # no cast otherwise: a traced one per block made graph simplifiers (onnxslim)
                bias = bias.to(q.dtype)  # store the stage's resized table once per block (334 MB ONNX for 58 MB)
        if tracing():  # (B, h, N, d) -> (B, C, H, W) by a 4-d reshape
            return self._attend(q, k, v, bias).transpose(-2, -1).reshape(B, C, H, W)
        # PyTorch's fused attention: scale, bias, softmax and the value product in one cache-blocked kernel (it needs
        # unit stride along the channels; NCHW maps of a YAML neck have not, and PyTorch's fallback then materialises
        # the N x M logits and, on CPUs, runs half precision in float32)
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=self.scale)
        return out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)  # channels-last map

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(scale * q k^T + bias) v written out (exported graphs): (B, h, N, d) -> (B, h, N, d)."""
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            attn = attn + bias
        return self.attn_drop(attn.softmax(dim=-1)) @ v


def _adaptive_avg_pool_matrix(n: int, k: int, ref: torch.Tensor) -> torch.Tensor:
    """(k, n) matrix whose product with a length-n axis equals ``adaptive_avg_pool1d(., k)`` (ONNX-exportable)."""
    i = torch.arange(k, device=ref.device)
    start = (i * n) // k
    end = ((i + 1) * n + k - 1) // k
    j = torch.arange(n, device=ref.device)
    mask = (j[None] >= start[:, None]) & (j[None] < end[:, None])
    return mask.to(ref.dtype) / (end - start).to(ref.dtype)[:, None]


class IDConv(nn.Module):
    """Input-dependent depthwise convolution (official ``DynamicConv2d``): (B, C, H, W) -> (B, C, H, W).

    The input is average-pooled to KxK, a 1x1 Conv-BN-GELU (C -> C/r) and a 1x1 conv (-> G*C) give G attention maps
    per channel; a softmax over G mixes the G learnable KxK kernels ``weight`` (G, C, K, K) into one kernel per sample
    and channel. The bias is mixed the same way from the globally pooled input. The per-sample kernels run as one
    grouped convolution (B*C groups).

    Args:
        dim: Channels.
        kernel_size: K.
        reduction_ratio: r of the attention branch.
        num_groups: G (> 1).
        bias: Learn G biases per channel.
    """

    # onnx2tf 1.x (SavedModel, GraphDef, Edge TPU; measured 2026-12-02, yolov8n-transxnet at 640): "The number of
    # filters must be evenly divisible by the number of groups. Received: groups=24, filters=7" (it reads the kernel
    # computed per image in the wrong layout)
    export_unsupported: ClassVar[dict[str, str]] = dict.fromkeys(
        ("saved_model", "pb", "edgetpu"),
        "onnx2tf (Ultralytics' TensorFlow converter) cannot convert IDConv's depthwise convolution, whose kernel is "
        "computed per image; export to litert (TFLite, converted from PyTorch) instead",
    )

    def __init__(
        self, dim: int, kernel_size: int = 3, reduction_ratio: int = 4, num_groups: int = 2, bias: bool = True
    ):
        super().__init__()
        if num_groups < 2:
            raise PluginError(f"IDConv: num_groups must be > 1 (got {num_groups})")
        if dim // reduction_ratio < 1:
            raise PluginError(f"IDConv: dim {dim} // reduction_ratio {reduction_ratio} is 0; use more channels")
        self.num_groups, self.K = num_groups, kernel_size
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.pool = nn.AdaptiveAvgPool2d((kernel_size, kernel_size))
        self.proj = nn.Sequential(
            ConvNormAct(dim, dim // reduction_ratio, 1, act=True),
            nn.Conv2d(dim // reduction_ratio, dim * num_groups, 1),
        )
        self.bias = nn.Parameter(torch.empty(num_groups, dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.trunc_normal_(self.bias, std=0.02)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            # ONNX has no adaptive pooling for sizes that K does not divide: use the equivalent pooling matrices
            ph = _adaptive_avg_pool_matrix(x.shape[-2], self.K, x)
            pw = _adaptive_avg_pool_matrix(x.shape[-1], self.K, x)
            return ph @ x @ pw.transpose(0, 1)
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        G, K = self.num_groups, self.K
        attn = self.proj(self._pool(x)).reshape(B, G, C, K, K).softmax(dim=1)
        weight = (attn * self.weight.unsqueeze(0)).sum(dim=1)  # (B, C, K, K)
        bias = None
        if self.bias is not None:
            a = self.proj(x.mean(dim=(-2, -1), keepdim=True)).reshape(B, G, C).softmax(dim=1)
            bias = (a * self.bias.unsqueeze(0)).sum(dim=1).reshape(-1)
        if B == 1:
            if bias is not None and tracing():  # Core ML needs a conv's bias constant: add the mixed one after
                y = F.conv2d(x, weight.reshape(C, 1, K, K), None, padding=K // 2, groups=C)
                return y + bias.reshape(1, C, 1, 1)
            return F.conv2d(x, weight.reshape(C, 1, K, K), bias, padding=K // 2, groups=C)
        y = F.conv2d(x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K), bias, padding=K // 2, groups=B * C)
        return y.reshape(B, C, H, W)


def _check_dmixer(dim: int, num_heads: int) -> None:
    if dim % 2 or (dim // 2) % num_heads or dim < 8:
        raise PluginError(
            f"D-Mixer needs an even channel count >= 8 whose half is divisible by num_heads; got {dim} channels and "
            f"{num_heads} heads. Change the row's channels or num_heads."
        )


class DMixer(nn.Module):
    """Dual dynamic token mixer (official ``HybridTokenMixer``): (B, C, H, W) -> (B, C, H, W).

    Channel halves go to IDConv (``local_unit``) and OSRA (``global_unit``); their concatenation passes through the
    STE (``proj``: 3x3 depthwise conv, GELU, BN, 1x1 squeeze to max(16, C/8), GELU, BN, 1x1 expand, BN) plus a residual.
    As a YAML row (rule "same"): ``[-1, 1, DMixer, [7, 2, 1, 2]]`` = kernel 7, 2 groups, 1 head, sr_ratio 2.

    Args:
        c1: Channels (even).
        kernel_size: IDConv kernel.
        num_groups: IDConv attention groups G.
        num_heads: OSRA heads.
        sr_ratio: OSRA spatial reduction.
        reduction_ratio: STE squeeze ratio.
        pos_size: Side of an own learnable relative position table (for use outside the backbone, which shares one
            table per stage); 0 (default) = no relative position bias unless one is passed to ``forward``.
    """

    export_unsupported: ClassVar[dict[str, Any]] = {
        "coreml": lambda m, args: TransXNet.export_unsupported["coreml"] if m.relative_pos_enc is not None else None,
    }

    def __init__(
        self,
        c1: int,
        kernel_size: int = 7,
        num_groups: int = 2,
        num_heads: int = 1,
        sr_ratio: int = 2,
        reduction_ratio: int = 8,
        pos_size: int = 0,
    ):
        super().__init__()
        dim = c1
        _check_dmixer(dim, num_heads)
        self.local_unit = IDConv(dim // 2, kernel_size=kernel_size, num_groups=num_groups)
        self.global_unit = OSRA(dim // 2, num_heads=num_heads, sr_ratio=sr_ratio)
        inner = max(16, dim // reduction_ratio)
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            BatchNorm2d(dim),
            nn.Conv2d(dim, inner, 1),
            nn.GELU(),
            BatchNorm2d(inner),
            nn.Conv2d(inner, dim, 1),
            BatchNorm2d(dim),
        )
        _init_pos_table(self, pos_size, num_heads, sr_ratio)

    def forward(self, x: torch.Tensor, relative_pos_enc: PosEnc = None) -> torch.Tensor:
        if relative_pos_enc is None:
            relative_pos_enc = _own_pos_enc(self)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat([self.local_unit(x1), self.global_unit(x2, relative_pos_enc)], dim=1)
        return self._ste(x) + x

    def _ste(self, x: torch.Tensor) -> torch.Tensor:
        """The STE branch ``proj(x)``; in inference its BatchNorms are folded into the 1x1 convs."""
        p = self.proj
        if self.training or _autocast(x.device):
            return p(x)
        x = p[1](p[0](x))
        w, b = export_constant(p, "fold_3", lambda: _fold_1x1(p[3], pre=p[2]))
        x = p[4](F.conv2d(x, w, b))
        w, b = export_constant(p, "fold_6", lambda: _fold_1x1(p[6], pre=p[5], post=p[7]))
        return F.conv2d(x, w, b)


def _init_pos_table(m: nn.Module, pos_size: int, num_heads: int, sr_ratio: int) -> None:
    """Give a standalone block its own zero-initialised relative position table (``relative_pos_enc``)."""
    if pos_size > 0:
        k = math.ceil(pos_size / sr_ratio)
        m.relative_pos_enc = nn.Parameter(torch.zeros(1, num_heads, pos_size * pos_size, k * k))
        m._pos_cache = _ResizeCache(4)
    else:
        m.relative_pos_enc = None


def _own_pos_enc(m: nn.Module) -> PosEnc:
    if m.relative_pos_enc is None:
        return None
    return _StagePosEnc(m.relative_pos_enc, m._pos_cache, None, owner=m)


class MultiScaleDWConv(nn.Module):
    """Depthwise convs with kernels 1/3/5/7 on channel quarters (the first takes the remainder): (B,C,H,W) -> same.

    Without autograd it runs as one depthwise conv whose kernel holds each quarter's kernel zero-padded to the largest
    size (the same sums: the padding taps add zeros), instead of a split, four convs and a concatenation; the
    parameters are the official four convs ``proj.0-3``.
    """

    def __init__(self, dim: int, scale: Sequence[int] = (1, 3, 5, 7)):
        super().__init__()
        n = len(scale)
        self.channels = [dim - dim // n * (n - 1)] + [dim // n] * (n - 1)
        self.proj = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.channels, scale))

    def kernel(self, identity: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged (C, 1, K, K) kernel and (C,) bias; ``identity`` adds the input (1 at every kernel centre)."""
        K = max(c.kernel_size[0] for c in self.proj)
        w = torch.cat([F.pad(c.weight, [(K - c.kernel_size[0]) // 2] * 4) for c in self.proj])
        if identity:
            eye = torch.zeros_like(w[:1])
            eye[..., K // 2, K // 2] = 1
            w = w + eye
        return w, torch.cat([c.bias for c in self.proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or tracing():  # the four convs as written (see forward_plus_identity)
            return torch.cat([_dwconv(conv, t) for conv, t in zip(self.proj, x.split(self.channels, dim=1))], dim=1)
        w, b = export_constant(self, "kernel", self.kernel)
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=w.shape[0])

    def forward_plus_identity(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x) + x``; without autograd (and in exported graphs) as one conv with the identity in the kernel.

        With autograd the four convs run as written: a depthwise conv's backward pass costs several times its forward
        on the CPU and grows with the kernel, so padding every quarter to 7x7 would cost more than it saves. Exported
        graphs get the merged kernel as a constant (converters need a kernel's shape): one conv instead of four, a
        split, a concatenation and a sum (measured in ONNX Runtime, 2 threads: the MS-FFN 24 % faster at 160x160).
        Half precision would round the identity into the kernel: there it is added after the conv.
        """
        exact = x.dtype in (torch.float32, torch.float64)
        if not tracing() and (torch.is_grad_enabled() or _autocast(x.device) or not exact):
            return self.forward(x) + x
        w, b = export_constant(self, ("kernel", exact), lambda: self.kernel(identity=exact))
        if w.dtype != x.dtype:  # a half-precision trace of float32 weights
            w, b = w.to(x.dtype), b.to(x.dtype)
        y = F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=w.shape[0])
        return y if exact else y + x


def _dwconv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise conv; the 1x1 one as a per-channel affine (PyTorch runs grouped 1x1 convs group by group)."""
    if conv.kernel_size == (1, 1):
        return addcmul(conv.bias.reshape(1, -1, 1, 1), x, conv.weight.reshape(1, -1, 1, 1))
    return conv(x)


class MSFFN(nn.Module):
    """Multi-scale FFN (official ``Mlp``): 1x1 expand-GELU-BN, ``x + MultiScaleDWConv(x)``, GELU, BN, 1x1-BN.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, drop: float = 0.0):
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Sequential(nn.Conv2d(in_features, hidden, 1, bias=False), nn.GELU(), BatchNorm2d(hidden))
        self.dwconv = MultiScaleDWConv(hidden)
        self.act = nn.GELU()
        self.norm = BatchNorm2d(hidden)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden, in_features, 1, bias=False), BatchNorm2d(in_features))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or _autocast(x.device):
            x = self.fc1(x)
            x = self.norm(self.act(self.dwconv(x) + x))
            return self.drop(self.fc2(self.drop(x)))
        # inference: the residual joins the depthwise kernels, ``norm`` and ``fc2.1`` fold into the 1x1 conv, and
        # without autograd the hidden-size activations are updated in place (no fresh buffers to page-fault in)
        conv, act, bn = self.fc1
        in_place = type(act) is type(self.act) is nn.GELU and not (torch.is_grad_enabled() or tracing())
        if not in_place:
            x = self.act(self.dwconv.forward_plus_identity(self.fc1(x)))
        else:
            x = torch.ops.aten.gelu_(conv(x), approximate=act.approximate)
            s, t = export_constant(bn, "affine", lambda: _bn_affine(bn))
            x = torch.addcmul(t.reshape(1, -1, 1, 1), x, s.reshape(1, -1, 1, 1), out=x)
            x = torch.ops.aten.gelu_(self.dwconv.forward_plus_identity(x), approximate=self.act.approximate)
        w, b = export_constant(self, "fc2", lambda: _fold_1x1(self.fc2[0], pre=self.norm, post=self.fc2[1]))
        return F.conv2d(x, w, b)


class LayerScale(nn.Module):
    """Per-channel scale and shift (official: a depthwise 1x1 conv; ``weight`` (C, 1, 1, 1), ``bias`` (C,))."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, 1, 1, 1) * init_value)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return addcmul(self.bias.reshape(1, -1, 1, 1), x, self.weight.reshape(1, -1, 1, 1))


@register_module(channels="same")
class TransXNetBlock(nn.Module):
    """TransXNet block: ``x + DPE(x)``, ``x + LS(DMixer(GN(x)))``, ``x + LS(MSFFN(GN(x)))``: (B, C, H, W) -> same.

    YAML (rule "same"): ``[-1, 1, TransXNetBlock, [7, 2, 2, 1]]`` = kernel 7, sr_ratio 2, 2 groups, 1 head.

    Args:
        c1: Channels (even, >= 8).
        kernel_size: IDConv kernel.
        sr_ratio: OSRA spatial reduction (the backbone uses 8/4/2/1 for strides 4/8/16/32).
        num_groups: IDConv attention groups.
        num_heads: OSRA heads (must divide c1/2).
        mlp_ratio: MS-FFN expansion.
        drop: Dropout in the MS-FFN.
        drop_path: Stochastic depth rate.
        layer_scale_init_value: LayerScale init (None: no LayerScale).
        pos_size: Own relative position table side (0: none; the backbone passes its shared per-stage table).
    """

    def __init__(
        self,
        c1: int,
        kernel_size: int = 7,
        sr_ratio: int = 2,
        num_groups: int = 2,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        pos_size: int = 0,
    ):
        super().__init__()
        dim = c1
        _check_dmixer(dim, num_heads)
        self.pos_embed = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = DMixer(dim, kernel_size, num_groups, num_heads, sr_ratio, pos_size=pos_size)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = MSFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale(dim, layer_scale_init_value)
            self.layer_scale_2 = LayerScale(dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = self.layer_scale_2 = nn.Identity()
        _init_weights(self)

    def forward(self, x: torch.Tensor, relative_pos_enc: PosEnc = None) -> torch.Tensor:
        x = _dw_plus_identity(self.pos_embed, x)  # x + DPE(x)
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(_group_norm(self.norm1, x), relative_pos_enc)))
        return x + self.drop_path(self.layer_scale_2(self.mlp(_group_norm(self.norm2, x))))


register_module(DMixer, channels="same")


@register_module(channels="scaled", repeat=True)
class C2fTransXNet(CSPBlock):
    """C2f whose bottlenecks are :class:`TransXNetBlock` s: (B, c1, H, W) -> (B, c2, H, W).

    YAML: ``[-1, 3, C2fTransXNet, [256, 2, 1]]`` = 256 channels (scaled), sr_ratio 2, 1 head.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of blocks.
        sr_ratio: OSRA spatial reduction of the blocks.
        num_heads: OSRA heads (must divide ``c2 * e / 2``).
        e: Hidden channel ratio.
        **block_kwargs: Further :class:`TransXNetBlock` arguments (kernel_size, num_groups, mlp_ratio, ...).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, sr_ratio: int = 2, num_heads: int = 1, e: float = 0.5, **block_kwargs
    ):
        super().__init__(c1, c2, n, e, sr_ratio=sr_ratio, num_heads=num_heads, **block_kwargs)

    def make_block(self, c: int, **kwargs) -> nn.Module:
        return TransXNetBlock(c, **kwargs)


def _init_weights(module: nn.Module) -> None:
    """Official init: trunc-normal(0.02) conv weights, zero conv biases, unit norms (IDConv keeps its own init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_module(channels="backbone")
class TransXNet(Backbone):
    """TransXNet backbone (arXiv 2310.19380): list of 4 stage features (each GroupNorm-ed), strides 4/8/16/32.

    Args:
        variant: ``t``, ``s`` or ``b``.
        weights: Official checkpoint to load (classifier keys dropped; missing output norms set to identity).
        num_classes: > 0 builds the official classification model instead of the dense-prediction one: no output
            norms (features are the raw stage outputs) and ``classifier``; ``forward_head(features)`` gives logits.
        drop_rate: Dropout in the MS-FFNs.
        drop_path_rate: Stochastic depth, increasing linearly over the blocks.
        image_size: Input size the relative position tables are sized for (224 in the official checkpoints); any
            input size works, the tables are resized to it.
        in_chans: Input channels.
    """

    family = "transxnet"
    default_variant = "t"
    export_unsupported: ClassVar[dict[str, str]] = {
        "coreml": "coremltools cannot convert the bicubic resize of its relative position tables "
        "(upsample_bicubic2d); export to onnx, openvino or ncnn instead",
    }
    scale_variants: ClassVar[dict[str, str]] = {"n": "t", "s": "t", "m": "s", "l": "b", "x": "b"}
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "t": {
            "layers": [3, 3, 9, 3],
            "embed_dims": [48, 96, 224, 448],
            "kernel_size": [7, 7, 7, 7],
            "num_groups": [2, 2, 2, 2],
            "sr_ratio": [8, 4, 2, 1],
            "num_heads": [1, 2, 4, 8],
            "mlp_ratios": [4, 4, 4, 4],
            "layer_scale_init_value": 1e-5,
        },
        "s": {
            "layers": [4, 4, 12, 4],
            "embed_dims": [64, 128, 320, 512],
            "kernel_size": [7, 7, 7, 7],
            "num_groups": [2, 2, 3, 4],
            "sr_ratio": [8, 4, 2, 1],
            "num_heads": [1, 2, 5, 8],
            "mlp_ratios": [6, 6, 4, 4],
            "layer_scale_init_value": 1e-5,
        },
        "b": {
            "layers": [4, 4, 21, 4],
            "embed_dims": [76, 152, 336, 672],
            "kernel_size": [7, 7, 7, 7],
            "num_groups": [2, 2, 4, 4],
            "sr_ratio": [8, 4, 2, 1],
            "num_heads": [2, 4, 8, 16],
            "mlp_ratios": [8, 8, 4, 4],
            "layer_scale_init_value": 1e-5,
        },
    }

    def __init__(
        self,
        variant: str = "t",
        weights: str | None = None,
        *,
        num_classes: int = 0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        image_size: int = 224,
        in_chans: int = 3,
    ):
        super().__init__(variant)
        cfg = self.config(self.variant)
        dims, layers, srs, heads = cfg["embed_dims"], cfg["layers"], cfg["sr_ratio"], cfg["num_heads"]
        self.num_classes = int(num_classes)
        self.sr_ratios = list(srs)
        self.patch_embed = PatchEmbed(in_chans, dims[0], patch_size=7, stride=4, padding=3)

        side = [math.ceil(image_size / 4)] * 2
        encs = []
        for i in range(4):
            k = [math.ceil(s / srs[i]) for s in side]
            encs.append(nn.Parameter(torch.zeros(1, heads[i], side[0] * side[1], k[0] * k[1])))
            side = [math.ceil(s / 2) for s in side]
        self.relative_pos_enc = nn.ParameterList(encs)
        self._pos_cache = _ResizeCache(8)  # 2 input sizes x 4 stages (~75 MB each at 640x640 for T)

        dpr = drop_path_rates(drop_path_rate, layers)
        network: list[nn.Module] = []
        for i in range(4):
            network.append(
                nn.ModuleList(
                    TransXNetBlock(
                        dims[i],
                        cfg["kernel_size"][i],
                        srs[i],
                        cfg["num_groups"][i],
                        heads[i],
                        cfg["mlp_ratios"][i],
                        drop_rate,
                        dpr[i][j],
                        cfg["layer_scale_init_value"],
                    )
                    for j in range(layers[i])
                )
            )
            if i < 3:
                network.append(PatchEmbed(dims[i], dims[i + 1], patch_size=3, stride=2, padding=1))
            self.feature_info.append(FeatureInfo(dims[i], 4 * 2**i, f"norm{2 * i}"))
        self.network = nn.ModuleList(network)
        for i in range(4):
            self.add_module(f"norm{2 * i}", nn.Identity() if num_classes > 0 else nn.GroupNorm(1, dims[i]))
        if num_classes > 0:
            self.classifier = nn.Sequential(
                nn.GroupNorm(1, dims[-1]), nn.AdaptiveAvgPool2d(1), nn.Conv2d(dims[-1], num_classes, 1)
            )
        _init_weights(self)
        self.check_feature_info()
        if weights:
            self.load_weights(weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, C_i, ~H/s, ~W/s) for s in 4, 8, 16, 32] (sizes as conv arithmetic gives them)."""
        if x.ndim != 4:
            raise PluginError(f"TransXNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        x = self.patch_embed(channels_last(x))
        outs = []
        for i in range(4):
            if i:
                x = self.network[2 * i - 1](x)
            pos = _StagePosEnc(self.relative_pos_enc[i], self._pos_cache, i, anchor=x, owner=self)
            for blk in self.network[2 * i]:
                x = blk(x, pos)
            outs.append(self._out_norm(getattr(self, f"norm{2 * i}"), x))
        return outs

    @staticmethod
    def _out_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A stage's output norm. Exported graphs call ``group_norm`` as a function: a YOLO neck leaves the stride-4
        output unused, and pnnx (NCNN's converter) crashed with a segmentation fault on the unused GroupNorm module
        call, writing no ``model_pnnx.py``."""
        if isinstance(norm, nn.GroupNorm):
            if tracing():
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            return _group_norm(norm, x)
        return norm(x)

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Classification logits from the features of a ``num_classes > 0`` model: -> (B, num_classes)."""
        if self.num_classes <= 0:
            raise PluginError("forward_head needs a model built with num_classes > 0")
        return self.classifier(features[-1]).flatten(1)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Official keys are ours; drop the classifier if the model has none, drop/add the dense output norms.

        An official ImageNet checkpoint has no ``norm0/2/4/6``; the official detection code leaves them at their init
        (weight 1, bias 0), which is filled in here so that a strict load succeeds.
        """
        own = model.state_dict()
        out = {}
        for k, v in state_dict.items():
            if k.startswith("classifier.") and not any(o.startswith("classifier.") for o in own):
                continue
            if k.split(".")[0] in ("norm0", "norm2", "norm4", "norm6") and k not in own:
                continue
            out[k] = v
        for i in (0, 2, 4, 6):
            for name, fill in (("weight", 1.0), ("bias", 0.0)):
                key = f"norm{i}.{name}"
                if key in own and key not in out:
                    out[key] = torch.full_like(own[key], fill)
        return out


__safe_globals__ = (_ResizeCache,)  # plain data pickled with models: allowed under ULTRALYTICS_SAFE_LOAD=1
