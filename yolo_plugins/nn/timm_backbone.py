"""Any timm model as a YOLO backbone: ``timm.create_model(name, features_only=True, ...)`` in a YAML row.

timm (https://github.com/huggingface/pytorch-image-models, Apache-2.0) describes the features of each model in
``feature_info`` (channels and reduction of every output). The ``Timm`` row turns that record into this package's
:class:`~yolo_plugins.nn.backbone.FeatureInfo`, so ``Feature`` rows and the neck get their channels exactly as with the
built-in families. By default the features at strides 4, 8, 16 and 32 are returned (a stride-2 stem output, as in
ResNets and MobileNets, is computed but not returned); single-stride models (plain ViTs) are refused with the reason.

timm is optional: ``pip install "yolo-plugins[timm]"``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import CheckpointError, PluginError
from .backbone import Backbone, FeatureInfo
from .layers import Fusable
from .registry import register_module

__all__ = ["Timm", "import_timm", "timm_feature_info"]

YOLO_STRIDES = (4, 8, 16, 32)  # what the YOLO necks read (P2..P5)
_HEAD_MODULES = ("head", "fc", "classifier", "head_dist", "last_linear", "conv_head", "norm_pre", "head_drop")


@contextlib.contextmanager
def _timm_load_log():
    """Collect what timm logs while it builds a model (it reports keys that did not load only there)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger, handler = logging.getLogger("timm"), Collect(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def import_timm():
    """The timm module, or an error that says how to install it."""
    try:
        import timm
    except ImportError:
        raise PluginError(
            "a Timm backbone row needs timm, which is not installed: pip install 'yolo-plugins[timm]' "
            "(or pip install timm)"
        ) from None
    return timm


def _check_name(timm, name: str) -> str:
    base = name.split(".")[0]  # "convnext_tiny.fb_in1k": model name and pretrained tag
    if base not in timm.list_models():
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        raise PluginError(
            f"timm has no model '{base}'."
            + (f" Did you mean {', '.join(close)}?" if close else "")
            + " `timm.list_models('pattern*')` lists them."
        )
    return name


def timm_feature_info(name: str, out_indices: list[int] | None = None, **kwargs) -> tuple[list[int], list[int]]:
    """(channels, strides) of the features a ``Timm`` row returns, read from a model built on the meta device."""
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(_check_name(timm, name), features_only=True, pretrained=False, **kwargs)
    keep = _select(name, model.feature_info.reduction(), out_indices)
    return [model.feature_info.channels()[i] for i in keep], [model.feature_info.reduction()[i] for i in keep]


def _select(name: str, reductions: list[int], out_indices: list[int] | None) -> list[int]:
    """Positions in timm's feature list to return: the given ones, or those at strides 4/8/16/32."""
    if out_indices is None:  # the last feature at each YOLO stride the model has
        keep = [max(i for i, r in enumerate(reductions) if r == s) for s in YOLO_STRIDES if s in reductions]
    else:
        keep = [int(i) for i in out_indices]
        if any(not -len(reductions) <= i < len(reductions) for i in keep):
            raise PluginError(f"timm model '{name}' has {len(reductions)} features; out_indices {keep} is out of range")
        keep = [i % len(reductions) for i in keep]
    strides = [reductions[i] for i in keep]
    if len(keep) < 2 or any(b <= a for a, b in zip(strides, strides[1:])):
        raise PluginError(
            f"timm model '{name}' gives features at strides {reductions}: a YOLO neck needs several features at "
            "increasing strides (e.g. 8/16/32). Single-stride models (plain ViTs) do not fit; choose a hierarchical "
            "model (convnext, efficientvit, resnet, mobilenetv3, repvit, ...)"
            + ("" if out_indices is None else f", or other out_indices than {out_indices}")
            + "."
        )
    return keep


@register_module(channels="backbone")
class Timm(Backbone, Fusable):
    """Any hierarchical timm model as a backbone (``features_only``): list of features at strides 4/8/16/32.

    Shapes: (B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i)] for the strides ``s_i`` of ``feature_info`` (by default
    those of 4, 8, 16, 32 that the model has). ``fuse()`` re-parameterises the model with timm's
    ``reparameterize_model`` (RepViT, MobileOne, FastViT, ...).

    Args:
        variant: The timm model name, optionally with a pretrained tag (``convnext_tiny``, ``resnet18.a1_in1k``).
        weights: A local checkpoint file for the model, loaded by timm's own mechanism (the same as
            ``pretrained_file``), or ``imagenet`` for timm's default pretrained weights (``pretrained=True``).
        pretrained: Download the pretrained weights through timm (needs the network once; see docs/timm.md).
        pretrained_file: A local file of those weights (timm's ``pretrained_cfg_overlay=dict(file=...)``).
        out_indices: Which of timm's features to return, instead of the stride 4/8/16/32 ones.
        **kwargs: Other ``timm.create_model`` arguments (``drop_path_rate``, ``in_chans``, ...).
    """

    family = "timm"
    default_variant = ""
    variants: ClassVar[dict[str, dict[str, Any]]] = {}  # any timm model: checked against timm.list_models()
    variants_help: ClassVar[str] = "any hierarchical timm model, e.g. convnext_tiny (timm.list_models())"

    @classmethod
    def check_variant(cls, variant: str) -> str:
        """``variant`` if timm has that model, else an error with the closest names."""
        if not variant:
            raise PluginError("name the timm model: timm:convnext_tiny, or [-1, 1, Timm, [convnext_tiny]] in a YAML")
        return _check_name(import_timm(), str(variant))

    def __init__(
        self,
        variant: str,
        weights: str | os.PathLike | None = None,
        *,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        out_indices: list[int] | None = None,
        **kwargs: Any,
    ):
        nn.Module.__init__(self)
        timm = import_timm()
        self.variant = self.check_variant(variant)
        self.feature_info: list[FeatureInfo] = []
        if weights == "imagenet":  # the name the built-in families use: timm's default pretrained weights
            pretrained, weights = True, None
        file = pretrained_file or weights
        if file is not None:
            if not os.path.isfile(file):
                raise CheckpointError(f"checkpoint file not found: '{file}' (for timm model '{self.variant}')")
            kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": os.fspath(file)}
            pretrained = True
        try:
            with _timm_load_log() as log:
                self.model = timm.create_model(self.variant, features_only=True, pretrained=bool(pretrained), **kwargs)
        except (OSError, RuntimeError, ValueError) as e:  # download failures, bad files, wrong arguments
            raise self._creation_error(timm, e, pretrained, file) from None
        if pretrained:
            self._check_load(log, file)
        info = self.model.feature_info
        self.out_positions = _select(self.variant, info.reduction(), out_indices)
        for i in self.out_positions:
            self.feature_info.append(FeatureInfo(info.channels()[i], info.reduction()[i], info.module_name()[i]))
        self.check_feature_info()

    def _creation_error(self, timm, e: Exception, pretrained: bool, file) -> PluginError:
        if file is not None:
            return CheckpointError(f"timm could not load '{file}' into '{self.variant}': {type(e).__name__}: {e}")
        if not pretrained:
            return PluginError(f"timm.create_model('{self.variant}', features_only=True) failed: {e}")
        cfg = timm.models.get_pretrained_cfg(self.variant)  # the default tag's, or the named tag's
        where = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "its source"
        return CheckpointError(
            f"the pretrained weights of timm model '{self.variant}' could not be fetched ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). They come from {where}. Offline, download them elsewhere and pass the "
            "file: [-1, 1, Timm, [NAME, {pretrained_file: path/to/model.safetensors}]] (timm's "
            "pretrained_cfg_overlay=dict(file=...))."
        )

    def _check_load(self, log: list[str], file) -> None:
        """timm loads features_only weights non-strictly: refuse a file whose body keys did not fit (a checkpoint in
        another layout, e.g. an official release that timm converted on its hub), instead of keeping random weights."""
        problems = {}
        for msg in log:
            m = re.search(r"(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading", msg)
            if m:
                keys = [k.strip() for k in m.group(2).split(",")]
                body = [k for k in keys if k.split(".")[0] not in _HEAD_MODULES]
                if body:
                    problems[m.group(1).lower()] = body
        if problems:
            what = "; ".join(f"{len(v)} {kind} keys, e.g. {v[:3]}" for kind, v in problems.items())
            raise CheckpointError(
                f"the weights {f'in {file!r} ' if file else ''}do not fit timm's '{self.variant}' ({what}). timm reads "
                "checkpoints in its own layout (as on the Hugging Face hub, timm/...); for an official release of "
                "RepViT, TransNeXt or TransXNet use this package's own backbone row, which reads the official layout."
            )

    @property
    def name(self) -> str:
        return f"timm:{self.variant}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the features at ``strides`` (see ``channels``)."""
        feats = self.model(x)
        return [feats[i] for i in self.out_positions]

    def fuse(self) -> None:
        """Re-parameterise the timm model in place (a no-op for models without re-parameterisable blocks)."""
        from timm.utils.model import reparameterize_model

        if not getattr(self, "_fused", False):
            reparameterize_model(self.model, inplace=True)
            self._fused = True


# pickled Timm rows reference timm's modules, enums and feature records: allowed under ULTRALYTICS_SAFE_LOAD=1
__safe_packages__ = ("timm",)
__safe_package_data__ = ("timm.models._features.FeatureInfo",)
