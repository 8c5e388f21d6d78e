"""Naive functional TransXNet (eval mode) straight from a state dict: the oracle for the optimised module.

Written from the paper's description and the official parameter layout, without any of the optimisations in
``yolo_plugins.nn.transxnet``: every block resizes the relative position encoding itself, IDConv runs one conv per
sample, attention is an explicit softmax, BatchNorms use their running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_block", "naive_forward"]


def _bn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def _gn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, 1, sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def _conv(sd: dict, p: str, x: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    w = sd[p + ".weight"]
    return F.conv2d(x, w, sd.get(p + ".bias"), stride, w.shape[-1] // 2, groups=groups)


def _dw(sd: dict, p: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return _conv(sd, p, x, stride, groups=x.shape[1])


def _idconv(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    B, C, _H, _W = x.shape
    bank, bias_bank = sd[p + ".weight"], sd[p + ".bias"]  # (G, C, K, K), (G, C)
    G, K = bank.shape[0], bank.shape[-1]

    def attn(t: torch.Tensor) -> torch.Tensor:
        t = F.gelu(_bn(sd, p + ".proj.0.bn", _conv(sd, p + ".proj.0.conv", t)))
        return _conv(sd, p + ".proj.1", t)

    a = attn(F.adaptive_avg_pool2d(x, K)).reshape(B, G, C, K, K).softmax(1)
    ab = attn(x.mean((2, 3), keepdim=True)).reshape(B, G, C).softmax(1)
    out = []
    for b in range(B):  # one depthwise conv per sample with its own kernel
        kernel = sum(a[b, g] * bank[g] for g in range(G))
        bias = sum(ab[b, g] * bias_bank[g] for g in range(G))
        out.append(F.conv2d(x[b : b + 1], kernel[:, None], bias, padding=K // 2, groups=C))
    return torch.cat(out)


def _osra(sd: dict, p: str, x: torch.Tensor, heads: int, sr: int, enc: torch.Tensor | None) -> torch.Tensor:
    B, C, H, W = x.shape
    d = C // heads
    q = _conv(sd, p + ".q", x).reshape(B, heads, d, H * W).transpose(-1, -2)
    kv = x
    if sr > 1:
        kv = F.gelu(_bn(sd, p + ".sr.0.bn", _dw(sd, p + ".sr.0.conv", kv, stride=sr)))
        kv = _bn(sd, p + ".sr.1.bn", _dw(sd, p + ".sr.1.conv", kv))
    kv = _dw(sd, p + ".local_conv", kv) + kv
    k, v = _conv(sd, p + ".kv", kv).chunk(2, 1)
    k = k.reshape(B, heads, d, -1)
    v = v.reshape(B, heads, d, -1).transpose(-1, -2)
    logits = (q @ k) * d**-0.5
    if enc is not None:
        logits = logits + F.interpolate(enc, size=logits.shape[-2:], mode="bicubic", align_corners=False)
    attn = torch.exp(logits - logits.amax(-1, keepdim=True))
    attn = attn / attn.sum(-1, keepdim=True)
    return (attn @ v).transpose(-1, -2).reshape(B, C, H, W)


def _msffn(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    x = _bn(sd, p + ".fc1.2", F.gelu(_conv(sd, p + ".fc1.0", x)))
    n = x.shape[1]
    sizes = [n - n // 4 * 3, n // 4, n // 4, n // 4]
    parts = x.split(sizes, 1)
    y = torch.cat([_dw(sd, f"{p}.dwconv.proj.{i}", t) for i, t in enumerate(parts)], 1)
    x = _bn(sd, p + ".norm", F.gelu(y + x))
    return _bn(sd, p + ".fc2.1", _conv(sd, p + ".fc2.0", x))


def _layer_scale(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return x * sd[p + ".weight"].reshape(1, -1, 1, 1) + sd[p + ".bias"].reshape(1, -1, 1, 1)


def naive_block(sd: dict, p: str, x: torch.Tensor, heads: int, sr: int, enc: torch.Tensor | None) -> torch.Tensor:
    """One TransXNet block (eval mode) with parameters ``sd[p + '.…']``: (B, C, H, W) -> (B, C, H, W)."""
    x = x + _dw(sd, p + ".pos_embed", x)
    y = _gn(sd, p + ".norm1", x)
    y1, y2 = y.chunk(2, 1)
    m = p + ".token_mixer"
    y = torch.cat([_idconv(sd, m + ".local_unit", y1), _osra(sd, m + ".global_unit", y2, heads, sr, enc)], 1)
    z = _bn(sd, m + ".proj.2", F.gelu(_dw(sd, m + ".proj.0", y)))
    z = _bn(sd, m + ".proj.5", F.gelu(_conv(sd, m + ".proj.3", z)))
    z = _bn(sd, m + ".proj.7", _conv(sd, m + ".proj.6", z))
    x = x + _layer_scale(sd, p + ".layer_scale_1", z + y)
    return x + _layer_scale(sd, p + ".layer_scale_2", _msffn(sd, p + ".mlp", _gn(sd, p + ".norm2", x)))


@torch.no_grad()
def naive_forward(sd: dict, cfg: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """Dense-prediction TransXNet forward (eval) from a state dict and a variant config: 4 normed stage features."""
    x = _bn(sd, "patch_embed.proj.bn", F.conv2d(x, sd["patch_embed.proj.conv.weight"], None, 4, 3))
    outs = []
    for i in range(4):
        if i:
            p = f"network.{2 * i - 1}.proj"
            x = _bn(sd, p + ".bn", F.conv2d(x, sd[p + ".conv.weight"], None, 2, 1))
        for j in range(cfg["layers"][i]):
            x = naive_block(
                sd, f"network.{2 * i}.{j}", x, cfg["num_heads"][i], cfg["sr_ratio"][i], sd[f"relative_pos_enc.{i}"]
            )
        outs.append(_gn(sd, f"norm{2 * i}", x))
    return outs
