"""Naive TransNeXt forward: the paper's math written out plainly, as the oracle of the optimised ``transnext.py``.

Uses the parameters of a :class:`yolo_plugins.nn.transnext.TransNeXt` (or of its blocks) but none of its forward code or
caches: the 3x3 window comes from ``F.unfold`` with an explicit validity mask, the relative coordinates of every
(query, key) pair are computed directly (no table of distinct values), the bias MLP runs on every pair, the shared
softmax runs on the concatenated similarities. Only for small inputs (it is O(N * P * 512) in memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _log_coords(q: torch.Tensor, k: torch.Tensor, ref: int) -> torch.Tensor:
    """Relative coordinate q - k for every pair, scaled by 8 / (ref - 1) and log-spaced: (n,), (p,) -> (n, p)."""
    r = (q[:, None] - k[None, :]) / (ref - 1) * 8
    return torch.sign(r) * torch.log2(r.abs() + 1) / math.log2(8)


def position_bias(m, H: int, W: int, pH: int, pW: int) -> torch.Tensor:
    """Continuous position bias of module ``m`` for every (query, pooled key) pair: (heads, H*W, pH*pW)."""
    qy, qx = torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32)
    ky = F.adaptive_avg_pool1d(qy[None, None], pH).flatten()  # centre of each pooling window
    kx = F.adaptive_avg_pool1d(qx[None, None], pW).flatten()
    dy = _log_coords(qy, ky, m.pretrain_size[0])  # (H, pH)
    dx = _log_coords(qx, kx, m.pretrain_size[1])  # (W, pW)
    coords = torch.stack(
        [dy[:, None, :, None].expand(H, W, pH, pW), dx[None, :, None, :].expand(H, W, pH, pW)], dim=-1
    ).reshape(H * W, pH * pW, 2)
    hidden = torch.relu(coords @ m.cpb_fc1.weight.t() + m.cpb_fc1.bias)
    return (hidden @ m.cpb_fc2.weight.t() + m.cpb_fc2.bias).permute(2, 0, 1)


def aggregated_attention(m, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Aggregated attention of module ``m`` on tokens x (B, H*W, C) -> (B, H*W, C)."""
    B, N, C = x.shape
    h, d, ws = m.num_heads, m.head_dim, m.window_size
    L = ws * ws
    pH, pW = m.pooled_size(H, W)
    P = pH * pW

    # which window positions fall inside the map, and the length scale
    valid = F.unfold(torch.ones(1, 1, H, W), ws, padding=ws // 2)[0].t().bool()  # (N, L)
    scale = torch.log(valid.sum(-1).float() + P)[:, None]  # (N, 1)

    q_norm = _l2((x @ m.q.weight.t() + m.q.bias).view(B, N, h, d).transpose(1, 2))  # (B, h, N, d)
    q_scaled = (q_norm + m.query_embedding) * F.softplus(m.temperature) * scale

    kv = x @ m.kv.weight.t() + m.kv.bias
    k = _l2(kv[..., :C].view(B, N, h, d)).reshape(B, N, C)
    v = kv[..., C:]
    to_map = lambda t: t.transpose(1, 2).reshape(B, C, H, W)
    k_win = F.unfold(to_map(k), ws, padding=ws // 2).view(B, h, d, L, N)
    v_win = F.unfold(to_map(v), ws, padding=ws // 2).view(B, h, d, L, N)
    sim_local = torch.einsum("bhnd,bhdln->bhnl", q_scaled, k_win) + m.relative_pos_bias_local[:, None, :]
    sim_local = sim_local.masked_fill(~valid, float("-inf"))

    pooled = F.gelu(F.conv2d(to_map(x), m.sr.weight, m.sr.bias))
    pooled = F.adaptive_avg_pool2d(pooled, (pH, pW)).flatten(2).transpose(1, 2)  # (B, P, C)
    pooled = F.layer_norm(pooled, (C,), m.norm.weight, m.norm.bias, m.norm.eps)
    kv_pool = pooled @ m.kv.weight.t() + m.kv.bias
    k_pool = _l2(kv_pool[..., :C].view(B, P, h, d).transpose(1, 2))
    v_pool = kv_pool[..., C:].view(B, P, h, d).transpose(1, 2)
    sim_pool = q_scaled @ k_pool.transpose(-2, -1) + position_bias(m, H, W, pH, pW)

    attn = torch.cat([sim_local, sim_pool], dim=-1).softmax(-1)
    a_local, a_pool = attn[..., :L], attn[..., L:]
    w_local = q_norm @ m.learnable_tokens + m.learnable_bias + a_local  # (B, h, N, L)
    out = torch.einsum("bhnl,bhdln->bhnd", w_local, v_win) + a_pool @ v_pool
    return out.transpose(1, 2).reshape(B, N, C) @ m.proj.weight.t() + m.proj.bias


def full_attention(m, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Stage-4 attention of module ``m``: (B, H*W, C) -> (B, H*W, C)."""
    B, N, C = x.shape
    h, d = m.num_heads, m.head_dim
    qkv = (x @ m.qkv.weight.t() + m.qkv.bias).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
    q = (_l2(qkv[0]) + m.query_embedding) * F.softplus(m.temperature) * math.log(N)
    attn = (q @ _l2(qkv[1]).transpose(-2, -1) + position_bias(m, H, W, H, W)).softmax(-1)
    return (attn @ qkv[2]).transpose(1, 2).reshape(B, N, C) @ m.proj.weight.t() + m.proj.bias


def conv_glu(m, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """ConvolutionalGLU ``m``: (B, H*W, C) -> (B, H*W, C)."""
    B, _N, _ = x.shape
    y = x @ m.fc1.weight.t() + m.fc1.bias
    a, gate = y.chunk(2, dim=-1)
    conv = m.dwconv.dwconv
    a = F.conv2d(a.transpose(1, 2).reshape(B, -1, H, W), conv.weight, conv.bias, padding=1, groups=conv.groups)
    y = F.gelu(a.flatten(2).transpose(1, 2)) * gate
    return y @ m.fc2.weight.t() + m.fc2.bias


def _ln(norm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def block(blk, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """A TransNeXt Block (eval, no stochastic depth) on tokens."""
    attn = aggregated_attention if hasattr(blk.attn, "learnable_tokens") else full_attention
    x = x + attn(blk.attn, _ln(blk.norm1, x), H, W)
    return x + conv_glu(blk.mlp, _ln(blk.norm2, x), H, W)


def neck_block(blk, x: torch.Tensor) -> torch.Tensor:
    """A TransNeXtBlock on a (B, C, H, W) map."""
    B, C, H, W = x.shape
    return block(blk, x.flatten(2).transpose(1, 2), H, W).transpose(1, 2).reshape(B, C, H, W)


def backbone(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The four stage features of a TransNeXt backbone."""
    outs = []
    for i in range(1, 5):
        pe = getattr(model, f"patch_embed{i}")
        x = F.conv2d(x, pe.proj.weight, pe.proj.bias, pe.proj.stride, pe.proj.padding)
        B, C, H, W = x.shape
        x = _ln(pe.norm, x.flatten(2).transpose(1, 2))
        for blk in getattr(model, f"block{i}"):
            x = block(blk, x, H, W)
        x = _ln(getattr(model, f"norm{i}"), x).transpose(1, 2).reshape(B, C, H, W)
        outs.append(x)
    return outs
