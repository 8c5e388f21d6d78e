"""The embedded dataset: deterministic, valid YOLO labels, a spread of sizes/classes/occlusion."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from yolo_plugins.tools.data import CLASSES, DatasetSpec, make_dataset

SPEC = DatasetSpec(n_train=24, n_val=8, imgsz=160, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), SPEC)


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".txt")):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_deterministic(dataset, tmp_path):
    again = make_dataset(tmp_path / "again", SPEC)
    assert _digest(dataset.parent) == _digest(again.parent)
    other = make_dataset(tmp_path / "other", DatasetSpec(n_train=24, n_val=8, imgsz=160, seed=4))
    assert _digest(other.parent) != _digest(dataset.parent)


def test_labels_valid_and_spread(dataset):
    import yaml

    root = dataset.parent
    data = yaml.safe_load(dataset.read_text())
    assert data["names"] == dict(enumerate(CLASSES))
    sizes, classes, per_image, overlaps = [], set(), [], 0
    for split, n in (("train", SPEC.n_train), ("val", SPEC.n_val)):
        ims = sorted((root / "images" / split).glob("*.png"))
        assert len(ims) == n
        for im_path in ims:
            im = cv2.imread(str(im_path))
            assert im.shape == (SPEC.imgsz, SPEC.imgsz, 3)
            rows = [
                list(map(float, line.split()))
                for line in (root / "labels" / split / f"{im_path.stem}.txt").read_text().splitlines()
            ]
            per_image.append(len(rows))
            boxes = []
            for c, x, y, w, h in rows:
                assert int(c) == c and 0 <= c < len(CLASSES)
                assert 0 < w <= 1 and 0 < h <= 1 and 0 <= x - w / 2 + 1e-6 and x + w / 2 <= 1 + 1e-6
                assert 0 <= y - h / 2 + 1e-6 and y + h / 2 <= 1 + 1e-6
                sizes.append(max(w, h) * SPEC.imgsz)
                classes.add(int(c))
                boxes.append((x - w / 2, y - h / 2, x + w / 2, y + h / 2))
            overlaps += any(
                min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
                for i, a in enumerate(boxes)
                for b in boxes[i + 1 :]
            )
    assert classes == set(range(len(CLASSES)))
    assert min(sizes) <= 12 and max(sizes) >= 0.4 * SPEC.imgsz  # about 8 px up to half the image
    assert np.median(per_image) >= 2 and max(per_image) >= 4
    assert overlaps >= 3  # occlusion happens


def test_reuses_existing(dataset):
    stamp = dataset.parent / ".spec"
    before = stamp.stat().st_mtime_ns
    assert make_dataset(dataset.parent, SPEC) == dataset
    assert stamp.stat().st_mtime_ns == before
