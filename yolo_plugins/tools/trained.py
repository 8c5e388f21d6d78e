"""Trained-looking weights for measuring exports: a freshly initialised network has zeros and near-zero scales that
converters fold away or that hide wrong graphs; these helpers make every parameter count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["photo_crops", "trained_looking"]


def photo_crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` real-photo crops (Ultralytics' bus.jpg and zidane.jpg) as a (n, 3, size, size) float batch in [0, 1]."""
    import cv2
    from ultralytics.utils import ASSETS

    rng = np.random.default_rng(seed)
    photos = [cv2.imread(str(Path(ASSETS) / f))[..., ::-1] for f in ("bus.jpg", "zidane.jpg")]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        h, w = im.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(cv2.resize(np.ascontiguousarray(im[y : y + s, x : x + s]), (size, size)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def trained_looking(model: torch.nn.Module, seed: int = 0, images: torch.Tensor | None = None) -> torch.nn.Module:
    """Make an initialised model's weights look trained, in place: every parameter gets Gaussian noise (2 % of its
    mean magnitude plus 0.02), BatchNorm scales/shifts random, then the BatchNorm statistics are re-estimated on
    ``images`` (real photos by default) so activations stay in range as in a trained network.

    Near-zero inits (layer scales of 1e-6, zero-initialised residual BNs, position biases) thereby contribute to the
    output, so an exported graph that drops or mangles them differs visibly from PyTorch.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for p in model.parameters():
        if p.is_floating_point():
            p.add_((torch.randn(p.shape, generator=g) * (0.02 * p.abs().mean() + 0.02)).to(p))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        images = photo_crops(8, 160, seed) if images is None else images
        was = model.training
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for x in images.split(2):
            model(x)
        model.train(was)
        for m in bns:
            m.momentum = 0.03  # Ultralytics' value
    _spread_scores(model, g)
    return model


@torch.no_grad()
def _spread_scores(model: torch.nn.Module, g: torch.Generator) -> None:
    """Give a detection head's class logits a trained spread: Ultralytics initialises the class biases to
    ``log(5 / nc / (640 / stride)^2)`` (scores ~1e-4, nothing detected, every score difference invisible); biases near
    -2 put scores across (0, 1) so that detections exist and score differences show."""
    for m in model.modules():
        cv3 = getattr(m, "cv3", None)
        if not (isinstance(cv3, torch.nn.ModuleList) and hasattr(m, "nc") and hasattr(m, "stride")):
            continue
        for branch in cv3:
            last = branch[-1] if isinstance(branch, torch.nn.Sequential) else branch
            if isinstance(last, torch.nn.Conv2d) and last.bias is not None:
                last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.5 - 2.0)
