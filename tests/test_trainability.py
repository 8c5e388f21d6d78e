"""Trainability through Ultralytics' own trainer: every plugin model at scale n fits a tiny fixed set (train = val,
no augmentation) about as well as YOLOv8n does in the same number of optimizer steps. A defect in the training path
(parameters the optimizer misses, a broken backward, an initialisation that stalls) shows up here as a loss that
does not fall."""

from __future__ import annotations

import csv

import pytest
import yaml

from yolo_plugins.tools.benchmark import NO_AUGMENTATION

MODELS = ("yolov8n.yaml", "yolov8n-repvit.yaml", "yolov8n-transxnet.yaml", "yolov8n-transnext.yaml")
STEPS = 40  # 4 images, batch 4: one optimizer step per epoch


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    from ultralytics import YOLO

    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    root = tmp_path_factory.mktemp("fit")
    data = make_dataset(root / "data", DatasetSpec(n_train=4, n_val=1, imgsz=64))
    cfg = yaml.safe_load(data.read_text())
    cfg["val"] = cfg["train"]  # train = val
    same = root / "same.yaml"
    same.write_text(yaml.safe_dump(cfg))
    out = {}
    for m in MODELS:
        YOLO(m).train(
            data=str(same), epochs=STEPS, imgsz=64, batch=4, nbs=4, workers=0, device="cpu", plots=False, save=False,
            val=False, project=str(root), name=m[:-5], exist_ok=True, verbose=False, seed=0, deterministic=True,
            optimizer="AdamW", lr0=0.002, warmup_epochs=0, amp=False, **NO_AUGMENTATION,
        )  # fmt: skip
        with open(root / m[:-5] / "results.csv") as fh:
            rows = [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        out[m] = [r["train/box_loss"] + r["train/cls_loss"] + r["train/dfl_loss"] for r in rows]
    return out


@pytest.mark.slow
@pytest.mark.xdist_group("trainability")
@pytest.mark.parametrize("model", MODELS[1:])
def test_plugin_model_fits_a_tiny_set_like_yolov8n(curves, model):
    ref, loss = curves["yolov8n.yaml"], curves[model]
    assert len(loss) == STEPS
    assert loss[-1] < 0.25 * loss[0], f"{model}: training loss {loss[0]:.2f} -> {loss[-1]:.2f} in {STEPS} steps"
    assert loss[-1] < 2.0 * ref[-1], f"{model} ends at {loss[-1]:.2f}, YOLOv8n at {ref[-1]:.2f} (same steps)"
