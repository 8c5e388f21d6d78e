"""RepViT: Revisiting Mobile CNN From ViT Perspective (Wang et al., CVPR 2024, arXiv 2307.09283).

A MobileNetV3-style CNN redesigned with ViT macro choices: every block separates a token mixer (3x3 depthwise conv,
re-parameterised RepVGG-style into one conv for inference) from a channel mixer (1x1 expand-GELU-1x1 FFN with a
residual), Squeeze-Excite on alternate blocks ("cross-block SE"), an early-convolution stem (two 3x3 stride-2 convs)
and a stride-2 block (depthwise stride-2 conv + 1x1 projection + FFN) opening stages 2-4.

Behaviour, parameter names and shapes follow the official THU-MIG/RepViT (Apache-2.0) ``model/repvit.py``: the
network is one ``features`` ModuleList (``features.0`` the stem, ``features.i`` the i-th block), Conv-BN pairs are
Sequentials with ``c``/``bn`` children, the classifier is ``classifier.classifier`` (+ ``classifier.classifier_dist``
for the distillation head), so the official ImageNet checkpoints (``{"model": state_dict}``) load unchanged. Feature
outputs are the last block of each stage (strides 4/8/16/32), as the official semantic-segmentation backbones pick
them (``out_indices`` e.g. ``[3, 7, 21, 24]`` for M1.1); the official Mask R-CNN configs take the block before each
stage end instead (``[2, 6, 20, 24]``), which ``out_indices=`` reproduces.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import CheckpointError, PluginError
from .backbone import Backbone, FeatureInfo
from .layers import CSPBlock, DropPath, Fusable, channels_last, drop_path_rates, fuse_conv_bn
from .registry import register_module

__all__ = [
    "BNLinear",
    "C2fRepViT",
    "ConvBN",
    "RepVGGDW",
    "RepViT",
    "RepViTBlock",
    "RepViTClassifier",
    "RepViTDown",
    "Residual",
    "SqueezeExcite",
    "benchmark_fuse",
    "fuse_modules",
]


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``divisor``), not below ``round_limit * v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def fuse_modules(module: nn.Module) -> nn.Module:
    """Re-parameterise every :class:`Fusable` strictly inside ``module``, children before parents; returns it."""
    for m in reversed(list(module.modules())):
        if m is not module and isinstance(m, Fusable):
            m.fuse()
    return module


def _check_channels(name: str, **channels: Any) -> None:
    bad = {k: v for k, v in channels.items() if not (isinstance(v, int) and not isinstance(v, bool) and v > 0)}
    if bad:
        raise PluginError(f"{name}: channel counts must be positive ints, got {bad}")


# ---------------------------------------------------------------------------------------------------------- blocks
class ConvBN(nn.Sequential, Fusable):
    """Bias-free Conv2d followed by BatchNorm2d (children ``c`` and ``bn``); ``fuse()`` folds them into ``conv``.

    Shapes: (B, c1, H, W) -> (B, c2, H/s, W/s).

    Args:
        c1: Input channels.
        c2: Output channels.
        k: Kernel size.
        s: Stride.
        p: Padding.
        g: Groups.
        bn_weight_init: Initial BN scale (0 makes a residual branch start as zero).
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, g: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(c1, c2, k, s, p, groups=g, bias=False))
        self.add_module("bn", nn.BatchNorm2d(c2))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @property
    def fused(self) -> bool:
        return "bn" not in self._modules

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace ``c`` + ``bn`` by one biased conv ``conv`` (in place, idempotent)."""
        if self.fused:
            return
        conv = fuse_conv_bn(self.c, self.bn)
        del self.c, self.bn
        self.add_module("conv", conv)

    def fused_conv(self) -> nn.Conv2d:
        """The equivalent single biased conv (fuses first)."""
        self.fuse()
        return self.conv


class RepVGGDW(nn.Module, Fusable):
    """RepViT token mixer: ``bn(dw3x3_bn(x) + dw1x1(x) + x)``, re-parameterised into one depthwise 3x3 conv.

    Shapes: (B, C, H, W) -> (B, C, H, W).

    Args:
        dim: Channels.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = ConvBN(dim, dim, 3, 1, 1, g=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, 1, 0, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.dim = dim
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        if self.fused:
            return self.forward_fuse(x)
        return self.bn(self.conv(x) + self.conv1(x) + x)

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Deployed form: one depthwise 3x3 conv."""
        return self.conv(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the 3x3 Conv-BN, the 1x1 conv, the identity and the outer BN into ``conv`` (in place, idempotent)."""
        if self.fused:
            return
        conv = self.conv.fused_conv()  # biased dw 3x3 = dw3x3 + BN
        w = conv.weight.clone()
        w[:, :, 1, 1] += self.conv1.weight[:, :, 0, 0] + 1.0  # 1x1 branch and identity at the kernel centre
        conv.weight.copy_(w)
        conv.bias.add_(self.conv1.bias)
        fused = fuse_conv_bn(conv, self.bn)
        del self.conv, self.conv1, self.bn
        self.conv = fused
        self.fused = True


class SqueezeExcite(nn.Module):
    """Squeeze-Excite with ReLU and sigmoid gate; reduced width ``make_divisible(C * rd_ratio, 8)`` (timm's rule).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = make_divisible(dim * rd_ratio, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(dim, rd, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, dim, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class Residual(nn.Module):
    """``x + drop_path(m(x))``; the wrapped branch is the child ``m`` (official parameter names)."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self.m(x))


def _channel_mixer(c: int, drop_path: float) -> Residual:
    """FFN with residual: 1x1 Conv-BN (c -> 2c), GELU, 1x1 Conv-BN (2c -> c, BN scale initialised to 0)."""
    return Residual(nn.Sequential(ConvBN(c, 2 * c), nn.GELU(), ConvBN(2 * c, c, bn_weight_init=0.0)), drop_path)


@register_module(channels="same")
class RepViTBlock(nn.Module, Fusable):
    """RepViT block (stride 1): RepVGG depthwise token mixer (+ optional SE), then a residual 2x FFN.

    Shapes: (B, C, H, W) -> (B, C, H, W). In a YAML: ``[-1, 1, RepViTBlock, []]`` or ``[-1, 1, RepViTBlock, [False]]``
    (no SE). ``fuse()`` re-parameterises the token mixer and folds every BatchNorm.

    Args:
        c1: Channels (input = output).
        se: Squeeze-Excite after the token mixer.
        drop_path: Stochastic-depth rate of the FFN branch.
    """

    def __init__(self, c1: int, se: bool = True, drop_path: float = 0.0):
        super().__init__()
        _check_channels("RepViTBlock", c1=c1)
        self.token_mixer = nn.Sequential(RepVGGDW(c1), SqueezeExcite(c1) if se else nn.Identity())
        self.channel_mixer = _channel_mixer(c1, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.channel_mixer(self.token_mixer(x))

    def fuse(self) -> None:
        """Re-parameterise in place (idempotent)."""
        fuse_modules(self)


@register_module(channels="scaled")
class RepViTDown(nn.Module, Fusable):
    """RepViT stride-2 block: depthwise kxk stride-2 Conv-BN (+ optional SE), 1x1 Conv-BN c1 -> c2, residual 2x FFN.

    Shapes: (B, c1, H, W) -> (B, c2, H/2, W/2). In a YAML: ``[-1, 1, RepViTDown, [256]]``.

    Args:
        c1: Input channels.
        c2: Output channels.
        se: Squeeze-Excite after the depthwise conv (the official models use none here).
        k: Depthwise kernel size (odd).
        drop_path: Stochastic-depth rate of the FFN branch.
    """

    def __init__(self, c1: int, c2: int, se: bool = False, k: int = 3, drop_path: float = 0.0):
        super().__init__()
        _check_channels("RepViTDown", c1=c1, c2=c2)
        if not (isinstance(k, int) and k > 0 and k % 2 == 1):
            raise PluginError(f"RepViTDown: kernel size k must be a positive odd int, got {k!r}")
        self.token_mixer = nn.Sequential(
            ConvBN(c1, c1, k, 2, (k - 1) // 2, g=c1), SqueezeExcite(c1) if se else nn.Identity(), ConvBN(c1, c2)
        )
        self.channel_mixer = _channel_mixer(c2, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c1, H, W) -> (B, c2, H/2, W/2)."""
        return self.channel_mixer(self.token_mixer(x))

    def fuse(self) -> None:
        """Fold every BatchNorm in place (idempotent)."""
        fuse_modules(self)


@register_module(channels="scaled", repeat=True)
class C2fRepViT(CSPBlock, Fusable):
    """C2f with RepViT blocks as bottlenecks (SE on alternate blocks, starting with the first).

    Shapes: (B, c1, H, W) -> (B, c2, H, W). In a YAML: ``[-1, 3, C2fRepViT, [256]]``.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of RepViT blocks.
        e: Hidden width ratio (each block has ``int(c2 * e)`` channels).
        se: Use SE in blocks 0, 2, 4, ...
        drop_path: Stochastic-depth rate of each block's FFN branch.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, se: bool = True, drop_path: float = 0.0):
        _check_channels("C2fRepViT", c1=c1, c2=c2, n=n)
        if not (isinstance(e, (int, float)) and e > 0 and int(c2 * e) > 0):
            raise PluginError(f"C2fRepViT: e={e!r} gives int(c2 * e) = {int(c2 * e)} hidden channels; use e > 0")
        super().__init__(c1, c2, n, e, se=se, drop_path=drop_path)

    def make_block(self, c: int, se: bool = True, drop_path: float = 0.0) -> nn.Module:
        """Block ``i`` (counted in construction order) gets SE when ``se`` and ``i`` is even."""
        i = self._n_blocks = getattr(self, "_n_blocks", -1) + 1
        return RepViTBlock(c, se=se and i % 2 == 0, drop_path=drop_path)

    @torch.no_grad()
    def fuse(self) -> None:
        """Re-parameterise the RepViT blocks and fold the BNs of ``cv1``/``cv2`` like Ultralytics' ``fuse`` does."""
        fuse_modules(self)
        for conv in (self.cv1, self.cv2):
            if hasattr(conv, "bn"):
                conv.conv = fuse_conv_bn(conv.conv, conv.bn)
                delattr(conv, "bn")
                conv.forward = conv.forward_fuse


# ------------------------------------------------------------------------------------------------------------ head
class BNLinear(nn.Sequential, Fusable):
    """BatchNorm1d then Linear (children ``bn``, ``l``); ``fuse()`` folds them into one Linear ``l``.

    Shapes: (B, C) -> (B, num_classes).
    """

    def __init__(self, c: int, num_classes: int, std: float = 0.02):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(c))
        self.add_module("l", nn.Linear(c, num_classes))
        nn.init.trunc_normal_(self.l.weight, std=std)
        nn.init.zeros_(self.l.bias)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold ``bn`` into ``l`` (in place, idempotent)."""
        if "bn" not in self._modules:
            return
        bn, lin = self.bn, self.l
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = bn.bias - bn.running_mean * scale
        fused = nn.Linear(lin.in_features, lin.out_features).to(lin.weight).requires_grad_(lin.weight.requires_grad)
        fused.weight.copy_(lin.weight * scale[None, :])
        fused.bias.copy_(lin.weight @ shift + lin.bias)
        del self.bn, self.l
        self.add_module("l", fused)


class RepViTClassifier(nn.Module, Fusable):
    """Official classification head: ``classifier`` (+ ``classifier_dist``, averaged in eval; a tuple in training).

    Shapes: (B, C) -> (B, num_classes).
    """

    def __init__(self, c: int, num_classes: int, distillation: bool = True):
        super().__init__()
        self.classifier = BNLinear(c, num_classes)
        self.distillation = distillation
        if distillation:
            self.classifier_dist = BNLinear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C) -> (B, num_classes), or a (class, distillation) pair of them when training with distillation."""
        if not self.distillation:
            return self.classifier(x)
        y, y_dist = self.classifier(x), self.classifier_dist(x)
        return (y, y_dist) if self.training else (y + y_dist) / 2

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BNs and average the two heads into ``classifier`` (in place, idempotent)."""
        fuse_modules(self)
        if self.distillation:
            a, b = self.classifier.l, self.classifier_dist.l
            a.weight.copy_((a.weight + b.weight) / 2)
            a.bias.copy_((a.bias + b.bias) / 2)
            del self.classifier_dist
            self.distillation = False


# ----------------------------------------------------------------------------------------------------------- model
def _stem(c_in: int, c: int) -> nn.Sequential:
    """Two 3x3 stride-2 Conv-BNs with a GELU between: (B, c_in, H, W) -> (B, c, H/4, W/4)."""
    return nn.Sequential(ConvBN(c_in, c // 2, 3, 2, 1), nn.GELU(), ConvBN(c // 2, c, 3, 2, 1))


def _block_plan(embed_dims: Sequence[int], depths: Sequence[int]) -> list[tuple[int, int, bool, int]]:
    """Per block ``(c_out, stride, se, stage)``: stages 2-4 open with a stride-2 block without SE; the other blocks
    of a stage alternate SE starting with SE, except the stage's last block, which has none (the official cfgs)."""
    plan = []
    for s, (c, d) in enumerate(zip(embed_dims, depths)):
        body = d if s == 0 else d - 1
        if s > 0:
            plan.append((c, 2, False, s))
        plan += [(c, 1, j % 2 == 0 and j != body - 1, s) for j in range(body)]
    return plan


@register_module(channels="backbone")
class RepViT(Backbone, Fusable):
    """RepViT backbone (arXiv 2307.09283): list of 4 stage features, strides 4/8/16/32.

    Shapes: (B, 3, H, W) -> [(B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16), (B, C4, H/32, W/32)]
    (sizes rounded up). ``fuse()`` re-parameterises every block for inference.

    Args:
        variant: One of ``m0_9``, ``m1_0``, ``m1_1``, ``m1_5``, ``m2_3`` (the paper's M0.9 ... M2.3).
        weights: Optional official checkpoint (``repvit_<variant>_distill_*.pth``) or own state dict file.
        num_classes: 0 for a backbone; > 0 also builds the official classification head (``forward_head``).
        distillation: With ``num_classes > 0``: also build the distillation head ``classifier.classifier_dist`` that
            the released (distilled) checkpoints carry; eval logits are then the mean of both heads, as officially.
            Off by default like the official model functions (the paper's parameter counts exclude it); without it
            the checkpoints' distillation keys are dropped on loading.
        drop_path_rate: Stochastic depth of the FFN branches, increasing linearly over the blocks.
        out_indices: Indices into ``features`` whose outputs are returned; default: the last block of each stage.
        in_chans: Input channels.

    Examples:
        >>> m = RepViT("m0_9")
        >>> [f.shape[1] for f in m(torch.zeros(1, 3, 64, 64))], m.strides
        ([48, 96, 192, 384], [4, 8, 16, 32])
    """

    family = "repvit"
    default_variant = "m1_0"
    scale_variants: ClassVar[dict[str, str]] = {"n": "m0_9", "s": "m1_0", "m": "m1_1", "l": "m1_5", "x": "m2_3"}
    # depths count the blocks of each stage, the stride-2 block opening stages 2-4 included
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "m0_9": {"embed_dims": (48, 96, 192, 384), "depths": (3, 4, 16, 3)},
        "m1_0": {"embed_dims": (56, 112, 224, 448), "depths": (3, 4, 16, 3)},
        "m1_1": {"embed_dims": (64, 128, 256, 512), "depths": (3, 4, 14, 3)},
        "m1_5": {"embed_dims": (64, 128, 256, 512), "depths": (5, 6, 26, 5)},
        "m2_3": {"embed_dims": (80, 160, 320, 640), "depths": (7, 8, 36, 3)},
    }

    def __init__(
        self,
        variant: str = "m1_0",
        weights: str | None = None,
        *,
        num_classes: int = 0,
        distillation: bool = False,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
    ):
        super().__init__(variant)
        cfg = self.config(self.variant)
        dims, depths = cfg["embed_dims"], cfg["depths"]
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise PluginError(f"RepViT: num_classes must be an int >= 0 (0 = no head), got {num_classes!r}")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise PluginError(f"RepViT: drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        _check_channels("RepViT", in_chans=in_chans)
        self.in_chans, self.num_classes, self.distillation = in_chans, num_classes, bool(distillation)

        plan = _block_plan(dims, depths)
        dpr = [r for stage in drop_path_rates(float(drop_path_rate), [len(plan)]) for r in stage]
        layers: list[nn.Module] = [_stem(in_chans, dims[0])]
        strides, c_prev = [4], dims[0]
        for (c, s, se, _), dp in zip(plan, dpr):
            layers.append(RepViTDown(c_prev, c, drop_path=dp) if s == 2 else RepViTBlock(c, se=se, drop_path=dp))
            strides.append(strides[-1] * s)
            c_prev = c
        self.features = nn.ModuleList(layers)
        widths = [dims[0]] + [p[0] for p in plan]

        last = len(layers) - 1
        if out_indices is None:
            ends = [sum(depths[: i + 1]) for i in range(len(depths))]  # features[0] is the stem, block j is features[j]
            out_indices = ends
        out_indices = [int(i) for i in out_indices]
        if not out_indices or any(not 0 <= i <= last for i in out_indices) or sorted(set(out_indices)) != out_indices:
            raise PluginError(
                f"RepViT {self.variant}: out_indices {out_indices} must be increasing indices into features "
                f"(0..{last}); the stage ends are {[sum(depths[: i + 1]) for i in range(len(depths))]}"
            )
        if num_classes and out_indices[-1] != last:
            raise PluginError(f"RepViT: a classification head needs the last block ({last}) in out_indices")
        self.out_indices = out_indices
        self.feature_info = [FeatureInfo(widths[i], strides[i], f"features.{i}") for i in out_indices]
        self.check_feature_info()

        if num_classes > 0:
            self.classifier = RepViTClassifier(dims[-1], num_classes, self.distillation)
        if weights:
            self.load_weights(weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> list of the ``out_indices`` feature maps (see ``channels`` and ``strides``)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise PluginError(f"RepViT expects a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        x = channels_last(x)  # oneDNN's depthwise convs are several times faster in this layout
        outs = []
        for i, f in enumerate(self.features):
            x = f(x)
            if i in self.out_indices:
                outs.append(x)
                if i == self.out_indices[-1]:
                    break
        return outs

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Global-average-pool the last feature and classify: list[...(B, C4, h, w)] -> (B, num_classes)."""
        if self.num_classes == 0:
            raise PluginError("RepViT was built with num_classes=0 (no head); build it with num_classes=1000")
        return self.classifier(features[-1].mean((2, 3)))

    def fuse(self) -> None:
        """Re-parameterise every block (and the head) in place for inference; idempotent."""
        fuse_modules(self)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Official keys are ours; drop the head (or its distillation half) the model does not have.

        Also accepts the official mmdet/mmseg checkpoints (``backbone.features.*``; their neck/head keys are dropped)
        and timm's RepViT checkpoints (``stem.*``, ``stages.*``, ``head.*``: the official weights in timm's layout).
        """
        if any(k.startswith("backbone.features.") for k in state_dict):
            state_dict = {k[9:]: v for k, v in state_dict.items() if k.startswith("backbone.")}
        if "stem.conv1.c.weight" in state_dict:
            state_dict = _from_timm_layout(state_dict, model)
        head = getattr(model, "num_classes", 0) > 0
        dist = head and getattr(model, "distillation", False)
        out = {}
        for k, v in state_dict.items():
            if k.startswith("classifier.") and (not head or (k.startswith("classifier.classifier_dist.") and not dist)):
                continue
            out[k] = v
        return out


def _from_timm_layout(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's RepViT keys -> the official ones. timm keeps the official tensors and their order and renames the
    modules (``stem.conv1`` = ``features.0.0``, ``stages.i.blocks.j`` = ``features.k``, ...): body tensors pair up in
    order, each pair checked by shape and parameter name; the heads map by name."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    body = [k for k in state_dict if not k.startswith("head.")]
    name = getattr(model, "name", type(model).__name__)
    if len(body) != len(own):
        raise CheckpointError(
            f"this timm RepViT checkpoint has {len(body)} backbone tensors, {name} has {len(own)}: it is a checkpoint "
            "of another variant"
        )
    out = {}
    for a, b in zip(body, own):
        if a.rsplit(".", 1)[-1] != b.rsplit(".", 1)[-1] or state_dict[a].shape != own[b].shape:
            raise CheckpointError(
                f"timm RepViT checkpoint tensor '{a}' {list(state_dict[a].shape)} does not pair with '{b}' "
                f"{list(own[b].shape)} of {name}: it is a checkpoint of another variant"
            )
        out[b] = state_dict[a]
    for prefix, ours in (("head.head_dist.", "classifier.classifier_dist."), ("head.head.", "classifier.classifier.")):
        out.update({ours + k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
    return out


# ------------------------------------------------------------------------------------------------------- benchmark
@torch.inference_mode()
def benchmark_fuse(
    variant: str = "m1_0", imgsz: int | Sequence[int] = 640, batch: int = 1, iters: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """CPU latency of the RepViT backbone before and after ``fuse()``, measured in one run (same process, same input).

    Args:
        variant: RepViT variant.
        imgsz: Input size, an int or (H, W).
        batch: Batch size.
        iters: Timed forward passes per form, interleaved (the median is reported).
        warmup: Untimed passes per form first.

    Returns:
        ``unfused_ms``, ``fused_ms`` (median per forward), ``speedup`` (unfused / fused), parameter and module counts,
        ``max_abs_diff`` between the two forms' outputs, and the settings.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    model = RepViT(variant).eval()
    fused = copy.deepcopy(model)
    fused.fuse()
    x = torch.randn(batch, 3, h, w)

    for _ in range(warmup):
        model(x), fused(x)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(iters):  # interleaved, so load changes on a shared machine hit both forms alike
        for k, m in enumerate((model, fused)):
            t = time.perf_counter()
            m(x)
            times[k].append((time.perf_counter() - t) * 1e3)
    unfused_ms, fused_ms = (sorted(t)[len(t) // 2] for t in times.values())
    diff = max((a - b).abs().max().item() for a, b in zip(model(x), fused(x)))
    return {
        "variant": variant,
        "input": (batch, 3, h, w),
        "threads": torch.get_num_threads(),
        "iters": iters,
        "unfused_ms": unfused_ms,
        "fused_ms": fused_ms,
        "speedup": unfused_ms / fused_ms,
        "params": (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in fused.parameters())),
        "modules": (len(list(model.modules())), len(list(fused.modules()))),
        "max_abs_diff": diff,
    }
