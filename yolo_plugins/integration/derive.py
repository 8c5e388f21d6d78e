"""Derive a plugin model from a stock Ultralytics YAML: the stock backbone swapped for a plugin backbone.

What ``yolo11n-seg-repvit.yaml`` and ``yolo-plugins swap yolo11n-seg.yaml --backbone repvit`` build:

1. The stride of every stock backbone row is measured (a forward pass on the meta device: shapes only).
2. The backbone's trailing stride-32 rows that are post-backbone blocks (:data:`POST_BLOCKS`: SPPF, C2PSA, ...) are
   kept. Every other backbone row is replaced by one plugin backbone row and one ``Feature`` row per stride that a
   later row reads (P3/8, P4/16, P5/32; P2/4 for P2 heads). A kept block that needs as many input channels as it
   outputs (C2PSA, PSA) gets a 1x1 ``Conv`` in front of it that projects the backbone's P5 to them, as the replaced
   stage-5 block did.
3. Every ``from`` of the kept rows and the head is remapped: a replaced row becomes the Feature row of its stride,
   the other rows move with the new numbering. The head's channels then come from the backbone's ``feature_info``.

Refused, with the reason: a stock backbone with a stride-64 level (P6 heads), a later row that reads a replaced row at
a stride the plugin backbone does not produce, and a stock model whose backbone is already a TorchVision or plugin
backbone.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ModelNameError, PluginError
from ..nn.backbone import Backbone, backbone_families
from ..nn.registry import REGISTRY
from .parser import recording

__all__ = ["POST_BLOCKS", "BackboneChoice", "Derived", "parse_backbone", "backbone_strides", "derive", "to_yaml"]

POST_BLOCKS = ("SPP", "SPPF", "SPPELAN", "PSA", "C2PSA", "C2fPSA", "AIFI")
# blocks that need input channels == their (scaled) output channels: a 1x1 Conv projects the backbone's P5 to them
SAME_CHANNEL_BLOCKS = ("PSA", "C2PSA", "C2fPSA")
# scale letters of stock files without a `scales` table (yolov9t/s/m/c/e, yolov10b) -> the family's n/s/m/l/x table
SCALE_ALIASES = {"t": "n", "b": "l", "c": "l", "e": "x"}


@dataclass(frozen=True)
class BackboneChoice:
    """A plugin backbone family, with one fixed ``variant`` or (``None``) the variant chosen by the YAML's scale."""

    cls: type[Backbone]
    variant: str | None = None

    @property
    def family(self) -> str:
        return self.cls.family

    @property
    def token(self) -> str:
        """Its part of a derived model name: ``repvit`` or ``repvit_m1_5``."""
        return self.family if self.variant is None else f"{self.family}_{self.variant}"

    @property
    def label(self) -> str:
        """``RepViT``, ``RepViT m1_5``, ``Timm convnext_tiny``."""
        return self.cls.__name__ + (f" {self.variant}" if self.variant else "")

    @property
    def yaml_name(self) -> str:
        return next(e.name for e in REGISTRY.values() if e.cls is self.cls)

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """Strides of the features the backbone returns (a timm model's are read from timm)."""
        if self.family == "timm":
            from ..nn.timm_backbone import timm_feature_info

            return tuple(timm_feature_info(self.variant)[1])
        return tuple(self.cls.feature_strides)

    def row_args(self, scales: dict | None, stem: str = "") -> list:
        """The backbone row's args: ``[variant]`` or ``[{scale: variant}]`` over the stock YAML's scales."""
        if self.variant is not None:
            return [self.variant]
        table = self.cls.scale_variants
        if scales:
            return [{k: table.get(SCALE_ALIASES.get(k, k), self.cls.default_variant) for k in scales}]
        m = re.search(r"yolo(?:e-)?v?\d+([a-z])", stem)  # yolov9c -> c
        letter = SCALE_ALIASES.get(m.group(1), m.group(1)) if m else ""
        return [table.get(letter, self.cls.default_variant)]


def parse_backbone(text: str) -> BackboneChoice:
    """``"repvit"``, ``"repvit:m1_5"`` or ``"repvit_m1_5"`` -> :class:`BackboneChoice` (errors list what exists)."""
    families = backbone_families()
    name, sep, variant = str(text).replace(":", "_", 1).partition("_")
    cls = families.get(name.lower())
    if cls is None:
        raise PluginError(
            f"unknown backbone family '{name}'. Families: {', '.join(sorted(families))} "
            "(optionally with a variant: repvit:m1_5)"
        )
    if not sep and not cls.scale_variants:  # no variant per scale (timm): the name must say which
        cls.check_variant("")
    return BackboneChoice(cls, cls.check_variant(variant) if sep else None)


def _sources(f: Any, j: int) -> list[int]:
    return [s if s >= 0 else j + s for s in ([f] if isinstance(f, int) else list(f))]


def backbone_strides(stock: dict, size: int = 640) -> list[int | None]:
    """Stride of each backbone row's output (None for a non-tensor output), from a forward pass on the meta device
    (shapes only, nothing computed); a small CPU forward where a module has no meta implementation."""
    import torch

    from .compat import tasks

    cfg = {**copy.deepcopy(stock), "head": []}
    if cfg.get("scales"):
        cfg["scale"] = next(iter(cfg["scales"]))

    def run(device: str, s: int) -> list[int | None]:
        with torch.device(device), torch.no_grad(), recording():  # own records: not a `yolo-plugins shapes` table's
            seq, _ = tasks().parse_model(copy.deepcopy(cfg), ch=3, verbose=False)
            x, y, out = torch.zeros(1, 3, s, s), [], []
            for m in seq:
                if m.f != -1:
                    x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                x = m(x)
                y.append(x)
                ok = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[-1] > 0
                out.append(s // x.shape[-1] if ok else None)
        return out

    try:
        return run("meta", size)
    except Exception:  # noqa: BLE001 - some module without a meta kernel: measure on the CPU at a small size
        return run("cpu", 256)


@dataclass
class Derived:
    """A derived model YAML and what the derivation did (for the file's comments)."""

    yaml: dict
    backbone: BackboneChoice
    source: str
    replaced: int  # stock backbone rows 0..replaced-1 were replaced
    kept: list[str]  # stock modules kept after the backbone
    feature_strides: list[int]  # one Feature row each
    notes: dict[int, str] = field(default_factory=dict)  # new row index -> comment


def derive(stock: dict, backbone: BackboneChoice, source: str = "the stock YAML") -> Derived:
    """Swap the backbone of the model YAML dict ``stock`` for ``backbone`` (see the module docstring).

    Raises:
        ModelNameError: the model cannot take a plugin backbone; the message says why.
    """
    if not isinstance(stock.get("backbone"), list) or not isinstance(stock.get("head"), list):
        raise ModelNameError(f"{source} is not a model YAML with 'backbone' and 'head' row lists")
    rows_b, rows_h = copy.deepcopy(stock["backbone"]), copy.deepcopy(stock["head"])
    for i, row in enumerate(rows_b):
        m = row[2] if isinstance(row, (list, tuple)) and len(row) == 4 else None
        if m == "TorchVision" or m in REGISTRY:
            raise ModelNameError(
                f"{source} already has a {m} backbone (row {i}); derive from the model it replaces instead "
                "(e.g. yolo11n-cls.yaml, not yolo11-cls-resnet18.yaml)"
            )
    strides = backbone_strides(stock)
    provided = backbone.feature_strides
    deep = [s for s in strides if s and s > max(provided)]
    if deep:
        raise ModelNameError(
            f"{source} has a stride-{max(deep)} level (a P{int(math.log2(max(deep)))} head); plugin backbones end at "
            f"stride {max(provided)}. Derive from the P5 model instead (the same name without "
            "-p6)."
        )
    k = len(rows_b)
    while k > 0 and rows_b[k - 1][2] in POST_BLOCKS and strides[k - 1] == 32:
        k -= 1
    later = rows_b[k:] + rows_h  # old indices k, k+1, ...
    needed = set()
    for j, row in enumerate(later, start=k):
        for src in _sources(row[0], j):
            if src < k:
                s = strides[src]
                if s not in provided:
                    what = f"its stride-{s} output" if s else "a non-tensor output"
                    raise ModelNameError(
                        f"{source} cannot take a {backbone.label} backbone: row {j} ({row[2]}) reads stock "
                        f"row {src} ({rows_b[src][2]}), {what}; the backbone provides strides "
                        f"{'/'.join(map(str, provided))} only."
                    )
                needed.add(s)
    if not needed:
        raise ModelNameError(f"{source}: no later row reads the stock backbone, nothing to swap")
    needed = sorted(needed)
    front = [[-1, 1, backbone.yaml_name, backbone.row_args(stock.get("scales"), source)]]
    front += [[0, 1, "Feature", [provided.index(s)]] for s in needed]
    feature_row = {s: 1 + i for i, s in enumerate(needed)}
    project = k < len(rows_b) and rows_b[k][2] in SAME_CHANNEL_BLOCKS and rows_b[k][0] == -1
    if project:
        front.append([-1, 1, "Conv", [rows_b[k][3][0], 1, 1]])  # P5 -> the channels the block keeps
    offset = len(front) - k

    def new_index(old: int) -> int:
        return feature_row[strides[old]] if old < k else old + offset

    remapped = []
    notes = {0: f"{backbone.cls.__name__} features at strides {'/'.join(map(str, provided))}"}
    for s, i in feature_row.items():
        notes[i] = f"P{int(math.log2(s))}/{s}"
    if len(front) > len(feature_row) + 1:
        notes[len(front) - 1] = f"projects P5 to the channels of {rows_b[k][2]}"
    for j, row in enumerate(later, start=k):
        nj = j + offset
        f = row[0]
        mapped = [
            -1 if (orig == -1 and new_index(src) == nj - 1) else new_index(src)
            for orig, src in zip([f] if isinstance(f, int) else list(f), _sources(f, j))
        ]
        remapped.append([mapped[0] if isinstance(f, int) else mapped, row[1], row[2], row[3]])
        notes[nj] = f"stock row {j}"
    if project:
        remapped[0][0] = -1  # the kept block reads the projection
    out = {key: copy.deepcopy(v) for key, v in stock.items() if key not in ("backbone", "head", "yaml_file", "scale")}
    n_kept = len(rows_b) - k
    out["backbone"] = front + remapped[:n_kept]
    out["head"] = remapped[n_kept:]
    return Derived(out, backbone, source, k, [r[2] for r in rows_b[k:]], needed, notes)


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip().removesuffix("...").strip()  # scalars end with a document-end marker


def to_yaml(d: Derived, name: str, origin: str = "") -> str:
    """The derived model as a commented YAML file in the stock files' style (one row per line)."""
    cls = d.backbone.cls
    doc = (inspect.getdoc(cls) or cls.__name__).splitlines()[0]
    if d.backbone.variant is None:
        by_scale = ", ".join(f"{k}: {v}" for k, v in cls.scale_variants.items())
        choice = f"variant by scale ({by_scale}; scales without a letter use the closest)"
    else:
        choice = f"variant {d.backbone.variant} at every scale"
    kept = f"; kept: {', '.join(d.kept)}" if d.kept else ""
    feats = ", ".join(f"P{int(math.log2(s))}/{s}" for s in d.feature_strides)
    lines = [
        f"# {name}: {d.source} with a {cls.__name__} backbone, {choice}.",
        f"# Backbone: {doc}",
        f"# Derived by yolo-plugins{origin}: stock backbone rows 0-{d.replaced - 1} -> {cls.__name__} + Feature rows "
        f"({feats}){kept}; every later 'from' remapped.",
        f"# Pretrained backbone: [-1, 1, {d.backbone.yaml_name}, [{d.backbone.variant or cls.default_variant}, "
        "imagenet]] (one variant then; or a checkpoint file).",
        "",
    ]
    y = d.yaml
    for key, value in y.items():
        if key in ("backbone", "head"):
            continue
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_flow(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_flow(value)}")
    i = 0
    for section in ("backbone", "head"):
        lines += ["", f"{section}:"]
        for row in y[section]:
            note = d.notes.get(i, "")
            lines.append(f"  - {_flow(row)} # {i}{': ' + note if note else ''}")
            i += 1
    return "\n".join(lines) + "\n"
