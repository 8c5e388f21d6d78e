"""Multi-output backbones: the shape record the neck reads, the base class, ``create_backbone`` and ``Feature``.

A backbone's forward returns a list of feature maps; ``feature_info`` says, for each, its channels and stride (like
detectron2's ``output_shape()`` and timm's ``feature_info``). The YAML registry sizes the neck from this record, never
from a dummy forward pass.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import PluginError
from .registry import register_module

__all__ = ["FeatureInfo", "Backbone", "Feature", "create_backbone", "list_backbones", "backbone_families"]


@dataclass(frozen=True)
class FeatureInfo:
    """One backbone output: ``channels`` of the map, ``stride`` relative to the input, ``module`` that produced it."""

    channels: int
    stride: int
    module: str = ""


class Backbone(nn.Module):
    """Base class of the plugin backbones.

    Subclasses declare ``variants`` (variant name -> constructor config, the paper's names) and ``default_variant``,
    build their stages in ``__init__`` (after calling ``super().__init__(variant)``), append a :class:`FeatureInfo` per
    returned feature to ``self.feature_info``, and implement ``forward(x) -> list[Tensor]`` plus the pure
    ``checkpoint_filter_fn(state_dict, model)`` that maps official checkpoint keys to theirs.
    """

    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    default_variant: ClassVar[str] = ""
    family: ClassVar[str] = ""  # prefix of create_backbone names, e.g. "repvit" for "repvit_m1_0"
    # YOLO scale letter -> variant, used by the shipped YAMLs and by derived model names (yolo11s-repvit.yaml)
    scale_variants: ClassVar[dict[str, str]] = {}
    feature_strides: ClassVar[tuple[int, ...]] = (4, 8, 16, 32)  # strides of the returned features (all variants)
    variants_help: ClassVar[str] = ""  # what `yolo-plugins list` says of a family without a fixed variant table
    lr_scale: ClassVar[float] = 1.0  # multiple of the trainer's learning rate for this backbone (integration.optim)

    def __init__(self, variant: str | None = None):
        super().__init__()
        self.variant = self.check_variant(variant or self.default_variant)
        self.feature_info: list[FeatureInfo] = []

    @classmethod
    def check_variant(cls, variant: str) -> str:
        """Return ``variant`` if it is declared, else raise an error listing the valid ones."""
        variant = str(variant)
        if variant not in cls.variants:
            close = difflib.get_close_matches(variant, list(cls.variants), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise PluginError(
                f"{cls.__name__} has no variant '{variant}'. Valid variants: {', '.join(cls.variants)}.{hint}"
            )
        return variant

    @classmethod
    def config(cls, variant: str) -> dict[str, Any]:
        """The declared configuration of ``variant`` (a copy)."""
        return dict(cls.variants[cls.check_variant(variant)])

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        """Stride of each returned feature map relative to the input."""
        return [f.stride for f in self.feature_info]

    def check_feature_info(self) -> None:
        """Validate the shape record: at least one feature, channels > 0, strides increasing."""
        ch, st = self.channels, self.strides
        if not ch or any(c <= 0 for c in ch) or any(b <= a for a, b in zip(st, st[1:])):
            raise PluginError(f"{type(self).__name__}: invalid feature_info {self.feature_info}")

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Map an official checkpoint's keys to this model's (identity here; families override)."""
        return state_dict

    def load_weights(self, path: str | os.PathLike, strict: bool = True):
        """Load a checkpoint file, or a published one by name (``imagenet``, a tag, an official file name: found in
        or downloaded once to the weights folder, see :mod:`yolo_plugins.weights`); keys are mapped by
        :meth:`checkpoint_filter_fn`, see :func:`yolo_plugins.weights.loading.load_pretrained`."""
        from ..weights.hub import resolve_weights
        from ..weights.loading import load_pretrained

        file = resolve_weights(self.family, self.variant, path)
        return load_pretrained(self, file, self.checkpoint_filter_fn, strict=strict, name=self.name)

    @property
    def name(self) -> str:
        return f"{self.family}_{self.variant}"

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, channels={self.channels}, strides={self.strides}"


@register_module(channels="feature")
class Feature(nn.Module):
    """Pick feature ``index`` from a backbone's list output: list[(B, C_i, H_i, W_i)] -> (B, C_index, H, W).

    In a YAML, ``[0, 1, Feature, [2]]`` takes the third feature of the backbone at row 0; the registry fills in its
    channel count from the backbone's ``feature_info``.
    """

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = int(index)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return x[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"


def backbone_families() -> dict[str, type[Backbone]]:
    """Registered backbone classes by family name, e.g. ``{"repvit": RepViT, ...}``."""
    from .registry import REGISTRY

    return {e.cls.family: e.cls for e in REGISTRY.values() if isinstance(e.cls, type) and issubclass(e.cls, Backbone)}


def list_backbones() -> list[str]:
    """Every ``create_backbone`` name, e.g. ``['repvit_m0_9', ..., 'transnext_micro', ...]``."""
    return [f"{fam}_{v}" for fam, cls in sorted(backbone_families().items()) for v in cls.variants]


def create_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs) -> Backbone:
    """Build a plugin backbone by name, like timm's ``create_model(..., features_only=True)``.

    Args:
        name: ``<family>_<variant>`` or ``<family>:<variant>``, e.g. ``"repvit_m1_0"``, ``"transnext_micro"``,
            ``"transxnet_t"``, ``"timm:convnext_tiny"`` (any timm model, with timm installed).
        weights: Optional official/own checkpoint file to load (classifier keys are dropped).
        **kwargs: Passed to the family's constructor (e.g. ``drop_path_rate``).

    Returns:
        The backbone; ``forward(x)`` returns the list of stage features described by ``.channels`` and ``.strides``.

    Examples:
        >>> m = create_backbone("repvit_m0_9")
        >>> [f.shape[1] for f in m(torch.zeros(1, 3, 64, 64))] == m.channels
        True
    """
    families = backbone_families()
    key = name.replace(":", "_", 1)
    for fam in sorted(families, key=len, reverse=True):
        if key.lower().startswith(fam + "_"):
            cls, variant = families[fam], key[len(fam) + 1 :]
            if cls.variants and variant not in cls.variants:
                valid = ", ".join(f"{fam}_{v}" for v in cls.variants)
                raise PluginError(f"unknown backbone '{name}': {cls.__name__} variants are {valid}")
            return cls(variant, weights=weights, **kwargs)
    close = difflib.get_close_matches(name, list_backbones(), n=3)
    raise PluginError(
        f"unknown backbone '{name}'. Known: {', '.join(list_backbones())}."
        + (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else "")
    )


__safe_globals__ = (FeatureInfo,)  # plain data pickled with models: allowed under ULTRALYTICS_SAFE_LOAD=1
