"""An embedded, deterministic YOLO-format detection dataset: a real learning problem that needs no download.

Five classes that differ in *shape and texture*, never by colour alone (every class is drawn in random colours):

====  ===========  ==========================================
id    name         what it is
====  ===========  ==========================================
0     disc         filled circle, plain fill
1     ring         annulus (hollow circle), plain fill
2     striped_box  rectangle with parallel stripes
3     checker_box  rectangle with a checkerboard texture
4     triangle     filled triangle with dotted texture
====  ===========  ==========================================

Objects range from about 8 px to half the image side, overlap (later objects partially occlude earlier ones; an
object whose visible area falls under 40 % is dropped from the labels) and sit among unlabelled clutter (lines, blobs,
text-like strokes) on varied backgrounds: crops of the two real photos Ultralytics ships (``bus.jpg``,
``zidane.jpg``), smooth noise and gradients. Everything is a function of ``seed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASSES", "DatasetSpec", "make_dataset"]

CLASSES = ("disc", "ring", "striped_box", "checker_box", "triangle")


@dataclass(frozen=True)
class DatasetSpec:
    """Size of the generated dataset."""

    n_train: int = 160
    n_val: int = 40
    imgsz: int = 256
    max_objects: int = 8
    seed: int = 0


def _photos() -> list[np.ndarray]:
    from ultralytics.utils import ASSETS

    out = []
    for name in ("bus.jpg", "zidane.jpg"):
        im = cv2.imread(str(Path(ASSETS) / name))
        if im is not None:
            out.append(im)
    return out


def _background(rng: np.random.Generator, s: int, photos: list[np.ndarray]) -> np.ndarray:
    kind = rng.integers(3) if photos else rng.integers(1, 3)
    if kind == 0:  # a random crop of a real photo, resized
        im = photos[rng.integers(len(photos))]
        h, w = im.shape[:2]
        c = int(rng.integers(min(h, w) // 4, min(h, w)))
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        return cv2.resize(im[y : y + c, x : x + c], (s, s), interpolation=cv2.INTER_AREA)
    if kind == 1:  # smooth coloured noise
        small = rng.integers(0, 256, (int(rng.integers(3, 12)),) * 2 + (3,), dtype=np.uint8)
        return cv2.resize(small, (s, s), interpolation=cv2.INTER_CUBIC)
    g = np.linspace(0, 1, s, dtype=np.float32)  # two-colour gradient
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = g[None, :, None] if rng.random() < 0.5 else g[:, None, None]
    return np.broadcast_to(a * (1 - t) + b * t, (s, s, 3)).astype(np.uint8).copy()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) fill pattern of a class: plain, stripes, checkerboard or dots, in two random colours."""
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    while np.abs(a - b).sum() < 150:  # keep the texture visible
        b = np.array(_colour(rng))
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(2, int(rng.integers(2, 5)) * max(1, min(h, w) // 16))
    if cls == 2:  # stripes at a random orientation
        ang = rng.uniform(0, np.pi)
        m = ((xx * np.cos(ang) + yy * np.sin(ang)) // period).astype(int) % 2 == 0
    elif cls == 3:
        m = ((xx // period) + (yy // period)) % 2 == 0
    elif cls == 4:
        m = ((xx % period) < period / 2) & ((yy % period) < period / 2)
    else:
        m = np.ones((h, w), bool)
    return np.where(m[..., None], a, b).astype(np.uint8)


def _mask(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 silhouette of a class inside its box."""
    m = np.zeros((h, w), np.uint8)
    if cls in (0, 1):
        cv2.ellipse(m, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360, 1, -1)
        if cls == 1:
            cv2.ellipse(m, (w // 2, h // 2), (max(w // 4, 1), max(h // 4, 1)), 0, 0, 360, 0, -1)
    elif cls in (2, 3):
        m[:] = 1
    else:
        apex = int(rng.integers(0, w))
        cv2.fillPoly(m, [np.array([[apex, 0], [0, h - 1], [w - 1, h - 1]], np.int32)], 1)
    return m


def _clutter(rng: np.random.Generator, im: np.ndarray) -> None:
    s = im.shape[0]
    for _ in range(int(rng.integers(2, 9))):
        k = rng.integers(3)
        p = tuple(int(v) for v in rng.integers(0, s, 2))
        if k == 0:
            q = tuple(int(v) for v in rng.integers(0, s, 2))
            cv2.line(im, p, q, _colour(rng), int(rng.integers(1, 4)))
        elif k == 1:  # irregular blob
            pts = (np.array(p) + rng.normal(0, s / 20, (7, 2))).astype(np.int32)
            cv2.fillPoly(im, [cv2.convexHull(pts)], _colour(rng))
        else:  # text-like strokes
            cv2.putText(
                im,
                "".join(rng.choice(list("AXZ7%#")) for _ in range(3)),
                p,
                cv2.FONT_HERSHEY_SIMPLEX,
                float(rng.uniform(0.3, 1.2)),
                _colour(rng),
                1,
            )


def _image(rng: np.random.Generator, spec: DatasetSpec, photos: list[np.ndarray]) -> tuple[np.ndarray, list]:
    s = spec.imgsz
    im = _background(rng, s, photos)
    _clutter(rng, im)
    owner = np.full((s, s), -1, np.int32)  # which object is visible at each pixel
    objs = []
    for j in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        size = float(np.exp(rng.uniform(np.log(8), np.log(s / 2))))  # log-uniform 8 px .. s/2
        w = int(np.clip(size * rng.uniform(0.7, 1.3), 8, s // 2))
        h = int(np.clip(size * rng.uniform(0.7, 1.3), 8, s // 2))
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        m = _mask(rng, cls, h, w).astype(bool)
        tex = _texture(rng, cls, h, w)
        region = im[y : y + h, x : x + w]
        region[m] = tex[m]
        owner[y : y + h, x : x + w][m] = j
        objs.append((cls, x, y, w, h, int(m.sum())))
    labels = []
    for j, (cls, x, y, w, h, area) in enumerate(objs):
        visible = int((owner[y : y + h, x : x + w] == j).sum())
        if area and visible / area >= 0.4:
            labels.append((cls, (x + w / 2) / s, (y + h / 2) / s, w / s, h / s))
    if rng.random() < 0.3:  # mild blur/noise so edges are not always perfect
        im = cv2.GaussianBlur(im, (3, 3), 0)
    return im, labels


def make_dataset(root: str | os.PathLike, spec: DatasetSpec = DatasetSpec()) -> Path:
    """Write the dataset under ``root`` (images/{train,val}, labels/{train,val}) and return its data YAML path.

    Re-running with the same ``root`` and ``spec`` reproduces identical files; an existing complete dataset with the
    same spec is reused.
    """
    import yaml

    root = Path(root).expanduser().resolve()
    data_yaml = root / "data.yaml"
    stamp = root / ".spec"
    if data_yaml.is_file() and stamp.is_file() and stamp.read_text() == repr(spec):
        return data_yaml
    photos = _photos()
    for split, n, offset in (("train", spec.n_train, 0), ("val", spec.n_val, 1)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([spec.seed, offset])
        for i in range(n):
            im, labels = _image(rng, spec, photos)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), im)
            (root / "labels" / split / f"{i:05d}.txt").write_text(
                "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
            )
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    stamp.write_text(repr(spec))
    return data_yaml
