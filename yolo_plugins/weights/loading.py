"""One loader for official checkpoints of every family.

Each family supplies a pure ``checkpoint_filter_fn(state_dict, model) -> state_dict`` that maps official keys to the
model's and drops classifier keys; :func:`load_pretrained` reads the file, applies it, refuses shape mismatches by key
name and reports missing/unexpected keys.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError

__all__ = ["read_state_dict", "load_pretrained", "LoadReport"]

_CONTAINER_KEYS = ("model", "state_dict", "model_ema", "ema", "module")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: tensors loaded, keys ignored, keys that were missing/unexpected."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its flat ``{name: tensor}`` dict.

    Accepts a bare state dict or a dict that nests it under ``model``/``state_dict``/``model_ema``/``ema`` (the
    official releases use ``model``). A ``module.`` prefix from DataParallel is removed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: '{p}'. Pass the path of a downloaded .pth/.pt file.")
    try:
        # official training scripts (DeiT style) also store their argparse.Namespace next to the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(
            f"'{p}' is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Expected a file written by torch.save() holding a state dict or a dict with a 'model' key."
        ) from None
    for _ in range(3):  # unwrap nested containers
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next(
                (obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], (Mapping, nn.Module))), None
            )
            if inner is None:
                break
            obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if not (isinstance(obj, Mapping) and _is_state_dict(obj)):
        keys = list(obj.keys())[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"'{p}' holds no state dict (found {keys}). Expected tensors by name, or a dict with a 'model' or "
            "'state_dict' key as in the official releases."
        )
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and sum(isinstance(v, torch.Tensor) for v in d.values()) >= max(1, len(d) // 2)


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    strict: bool = True,
    name: str | None = None,
) -> LoadReport:
    """Load ``path`` into ``model`` after ``filter_fn`` maps its keys.

    Args:
        model: The module to fill (its own ``state_dict()`` layout is the target).
        path: A checkpoint file (see :func:`read_state_dict`).
        filter_fn: Maps official keys to the model's and drops heads; identity if None.
        strict: Raise if the model has keys the checkpoint lacks (the checkpoint is probably another variant).
        name: Model name used in messages, e.g. ``repvit_m1_0``.

    Raises:
        CheckpointError: Missing file, unreadable file, a shape mismatch (named by key) or, when strict, missing keys.
    """
    name = name or type(model).__name__
    sd = read_state_dict(path)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    own = model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        k, got, want = mismatched[0]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {name}: '{k}' has shape {list(got)} in the file but {list(want)} in the "
            f"model ({len(mismatched)} mismatching tensors). The file is probably a checkpoint of another variant; "
            "pick the variant it was trained as."
        )
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if not any(k in own for k in sd):
        raise CheckpointError(
            f"checkpoint '{path}' shares no parameter names with {name} (its keys look like {list(sd)[:3]}). It is not "
            f"a checkpoint of this model family."
        )
    if strict and missing:
        raise CheckpointError(
            f"checkpoint '{path}' lacks {len(missing)} tensors that {name} needs, e.g. {missing[:5]}. The file is "
            "probably a checkpoint of another variant (or a truncated file); pass strict=False to load it partially."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if unexpected or missing:
        from ultralytics.utils import LOGGER

        LOGGER.warning(
            f"yolo-plugins: loaded '{path}' into {name}: {len(unexpected)} unexpected keys ignored {unexpected[:5]}, "
            f"{len(missing)} missing {missing[:5]}"
        )
    return LoadReport(loaded=len(sd) - len(unexpected), missing=missing, unexpected=unexpected)
