"""ContextAggregation: a global-context attention block (CATNet-style mmdet code, as used in the YOLO seed article).

Forward (per image, ``x`` of shape (C, H, W))::

    a = sigmoid(conv_a(x))                      # (1, H, W)   gate
    k = softmax_{H*W}(conv_k(x))                # (1, H, W)   attention over all positions
    v = conv_v(x)                               # (C/r, H, W)
    y = conv_m(sum_{hw} v * k) * a              # (C, 1, 1) context, gated per position
    out = x + y

``conv_a``, ``conv_k``, ``conv_v`` are biased 1x1 convs with Caffe2-Xavier init; ``conv_m`` is zero-initialised, so
the block is exactly the identity at initialisation. Parameter names (``a.conv.weight`` ...) follow the mmcv
``ConvModule`` layout of the reference code, so its checkpoints load as they are.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PluginError
from .registry import register_module

__all__ = ["ContextAggregation"]


def _conv1x1(c1: int, c2: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c1, c2, 1)))


@register_module(channels="same")
class ContextAggregation(nn.Module):
    """Global context aggregation with a per-position sigmoid gate: (B, C, H, W) -> (B, C, H, W).

    Args:
        c1: Input (= output) channels.
        reduction: ``v`` has ``max(c1 // reduction, 1)`` channels.
    """

    def __init__(self, c1: int, reduction: int = 1):
        super().__init__()
        if not (isinstance(c1, int) and c1 > 0) or not (isinstance(reduction, int) and reduction > 0):
            raise PluginError(f"ContextAggregation(c1={c1!r}, reduction={reduction!r}): both must be positive ints")
        self.in_channels, self.reduction = c1, reduction
        self.inter_channels = max(c1 // reduction, 1)
        self.a = _conv1x1(c1, 1)
        self.k = _conv1x1(c1, 1)
        self.v = _conv1x1(c1, self.inter_channels)
        self.m = _conv1x1(self.inter_channels, c1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Caffe2-Xavier (uniform Kaiming, a=1, fan_in) for a/k/v with zero bias; zeros for m (identity block)."""
        for s in (self.a, self.k, self.v):
            nn.init.kaiming_uniform_(s.conv.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(s.conv.bias)
        nn.init.zeros_(self.m.conv.weight)
        nn.init.zeros_(self.m.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W).

        ``v`` is linear and ``k`` sums to one over positions, so ``sum(v * k) = W_v (sum(x * k)) + b_v``: the context
        is pooled on ``x`` first and projected once, instead of projecting every position.
        """
        b, c = x.shape[:2]
        a = self.a(x).sigmoid()
        k = self.k(x).flatten(1).softmax(1)  # (B, HW)
        ctx = torch.bmm(x.flatten(2), k.unsqueeze(2)).flatten(1)  # (B, C)
        # v and m on the pooled (1x1) context are linear layers (LiteRT's converter lowered the 1x1 convs on a 1x1 map
        # to a rank-4 batch_matmul it then rejected)
        v, m = self.v.conv, self.m.conv
        y = F.linear(F.linear(ctx, v.weight.flatten(1), v.bias), m.weight.flatten(1), m.bias)  # (B, C)
        return x + y.view(b, c, 1, 1) * a

    def extra_repr(self) -> str:
        return f"c1={self.in_channels}, reduction={self.reduction}"
