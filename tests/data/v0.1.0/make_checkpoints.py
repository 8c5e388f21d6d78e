"""Write the 0.1.0 checkpoints that tests/test_legacy_checkpoints.py loads with later releases.

Run once with yolo-plugins 0.1.0 installed (commit cc43f4a), from this folder:

    python make_checkpoints.py

Each checkpoint is a real ``best.pt`` written by Ultralytics' trainer (one epoch on the embedded dataset at 64 px) from
a model whose classes are exactly those of a full-size plugin model: the same backbone classes, blocks, caches and
feature records, pickled under their 0.1.0 module paths. To keep the files small (tens of kB instead of 25-50 MB) the
backbones use a "pico" variant added to their variant tables here (narrow, one block per stage) and the neck a small
width; the pickled structure does not depend on the sizes. Next to each ``<name>.pt`` the script saves the fused fp32
eval output of a fixed input (``<name>.out.pt``), so a later release can prove it computes the same thing.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

import yolo_plugins
from yolo_plugins.repvit import RepViT
from yolo_plugins.transnext import TransNeXt
from yolo_plugins.transxnet import TransXNet

assert yolo_plugins.__version__ == "0.1.0", yolo_plugins.__version__
HERE = Path(__file__).resolve().parent
YAMLS = HERE.parents[2] / "yolo_plugins" / "model_yamls"

TransNeXt.variants["pico"] = {"embed_dims": (16, 32, 64, 128), "num_heads": (1, 1, 2, 4), "depths": (1, 1, 1, 1)}
TransXNet.variants["pico"] = {
    **TransXNet.variants["t"],
    "layers": [1, 1, 1, 1],
    "embed_dims": [16, 32, 64, 128],
    "num_heads": [1, 1, 2, 4],
}
RepViT.variants["pico"] = {"embed_dims": (16, 32, 64, 128), "depths": (2, 2, 2, 2)}

SCALES = {"n": [0.33, 0.0625, 1024]}  # a narrow neck: small files, same classes


def model_yaml(name: str) -> dict:
    if name == "timm":
        d = yaml.safe_load((YAMLS / "yolov8-repvit.yaml").read_text())
        d["backbone"][0] = [-1, 1, "Timm", ["test_efficientnet"]]
    else:
        d = yaml.safe_load((YAMLS / f"yolov8-{name}.yaml").read_text())
        if name != "ca":
            d["backbone"][0][3][0] = "pico"
    return {**d, "nc": 5, "scales": SCALES, "scale": "n"}


def main() -> None:
    from ultralytics import YOLO

    from yolo_plugins.data import DatasetSpec, make_dataset

    work = Path(tempfile.mkdtemp(prefix="legacy-ckpt-"))
    data = make_dataset(work / "data", DatasetSpec(n_train=4, n_val=2, imgsz=64))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    torch.save(x, HERE / "input.pt")
    manifest = {"yolo_plugins": yolo_plugins.__version__}
    import ultralytics

    manifest["ultralytics"], manifest["torch"] = ultralytics.__version__, torch.__version__.split("+")[0]
    for name in ("transnext", "transxnet", "repvit", "ca", "timm"):
        torch.manual_seed(0)
        cfg = work / f"yolov8n-{name}.yaml"
        cfg.write_text(yaml.safe_dump(model_yaml(name), sort_keys=False))
        model = YOLO(str(cfg))
        model.train(
            data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, amp=False,
            project=str(work / "runs"), name=name, exist_ok=True, verbose=False,
        )  # fmt: skip
        best = work / "runs" / name / "weights" / "best.pt"
        shutil.copy(best, HERE / f"{name}.pt")
        m = copy.deepcopy(YOLO(str(best)).model).float().fuse(verbose=False).eval()
        with torch.no_grad():
            torch.save(m(x)[0], HERE / f"{name}.out.pt")
        manifest[name] = {"classes": sorted({f"{type(m).__module__}.{type(m).__name__}" for m in model.model.modules()
                                             if type(m).__module__.startswith("yolo_plugins")})}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
