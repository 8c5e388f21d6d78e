"""Shared fixtures: a tiny registered backbone and helpers. Everything offline, small sizes."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: no online checks, no downloads
# derived model YAMLs go to a scratch folder, not the user's ~/.cache (fresh-process tests inherit it)
os.environ.setdefault("YOLO_PLUGINS_CACHE_DIR", tempfile.mkdtemp(prefix="yolo-plugins-test-cache-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import yolo_plugins  # noqa: E402
from yolo_plugins import Backbone, FeatureInfo, register_module, unregister_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
YAMLS = ROOT / "model_yamls"

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker process, not 2 x 2 on two cores
    torch.set_num_threads(1)


class ToyBackbone(Backbone):
    """Four strided convs: features at strides 4/8/16/32 with the variant's channels."""

    family = "toy"
    default_variant = "a"
    variants = {"a": dict(dims=(8, 16, 24, 40)), "b": dict(dims=(16, 32, 48, 80))}

    def __init__(self, variant: str = "a", weights: str | None = None):
        super().__init__(variant)
        dims = self.config(self.variant)["dims"]
        self.stem = nn.Conv2d(3, dims[0], 4, 4)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(dims, dims[1:]))
        for i, c in enumerate(dims):
            self.feature_info.append(FeatureInfo(c, 4 * 2**i, f"stages.{i}"))
        self.check_feature_info()
        if weights:
            self.load_weights(weights)

    def forward(self, x):
        out = [self.stem(x)]
        for s in self.stages:
            out.append(s(out[-1]))
        return out


class ScaledConv(nn.Module):
    """3x3 conv c1 -> c2 (a user module with the 'scaled' rule)."""

    def __init__(self, c1: int, c2: int, k: int = 3):
        super().__init__()
        self.c1, self.c2 = c1, c2
        self.conv = nn.Conv2d(c1, c2, k, padding=k // 2)

    def forward(self, x):
        return self.conv(x)


class RepeatBlock(nn.Module):
    """c1 -> c2 with n inner 1x1 convs (a user module with the 'scaled' rule and repeat=True)."""

    def __init__(self, c1: int, c2: int, n: int = 1):
        super().__init__()
        self.n = n
        self.m = nn.Sequential(nn.Conv2d(c1, c2, 1), *(nn.Conv2d(c2, c2, 1) for _ in range(n)))

    def forward(self, x):
        return self.m(x)


@pytest.fixture
def toy_modules():
    """Register ToyBackbone, ScaledConv and RepeatBlock for one test."""
    register_module(ToyBackbone, channels="backbone")
    register_module(ScaledConv, channels="scaled")
    register_module(RepeatBlock, channels="scaled", repeat=True)
    yield
    for name in ("ToyBackbone", "ScaledConv", "RepeatBlock"):
        unregister_module(name)


@pytest.fixture
def registered():
    """Make sure the patch is active (a test may have unregistered it) and leave it active."""
    yolo_plugins.register()
    yield
    yolo_plugins.register()


def toy_yaml(head_extra=None, backbone=None, scale="n") -> dict:
    """A small detection YAML on ToyBackbone (Feature rows -> ScaledConv/RepeatBlock neck -> Detect)."""
    return {
        "nc": 3,
        "scale": scale,
        "scales": {"n": [0.33, 0.25, 1024], "x": [1.0, 1.25, 512]},
        "backbone": backbone
        or [
            [-1, 1, "ToyBackbone", [{"n": "a", "x": "b"}]],  # 0
            [0, 1, "Feature", [1]],  # 1 P3
            [0, 1, "Feature", [2]],  # 2 P4
            [0, 1, "Feature", [3]],  # 3 P5
        ],
        "head": (head_extra or [])
        + [
            [1, 1, "ScaledConv", [64]],
            [2, 3, "RepeatBlock", [128]],
            [3, 1, "ScaledConv", [256, 1]],
            [[-3, -2, -1], 1, "Detect", ["nc"]],
        ],
    }


def seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


def task_batch(task: str, model: nn.Module, imgsz: int = 64) -> dict:
    """A generated training batch of two images with the targets ``task``'s Ultralytics loss reads."""
    g = torch.Generator().manual_seed(0)
    b, h = 2, imgsz
    batch = {
        "img": torch.rand(2, 3, h, h, generator=g),
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0], [0.0]]).clamp(max=model.yaml.get("nc", 80) - 1),  # pose YAMLs: nc 1
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.4, 0.6, 0.2, 0.2], [0.7, 0.3, 0.25, 0.3]]),
    }
    if task == "segment":  # overlapping-mask format: one map per image, value = instance number within the image
        masks = torch.zeros(b, h, h)
        masks[0, h // 5 : 4 * h // 5, h // 3 : 2 * h // 3] = 1
        masks[1, h // 2 : 7 * h // 10, h // 3 : h // 2] = 1
        masks[1, h // 8 : h // 2, h // 2 : 17 * h // 20] = 2
        batch["masks"], batch["sem_masks"] = masks, (masks > 0).long()
    elif task == "pose":
        nk, dims = model.yaml.get("kpt_shape", [17, 3])
        batch["keypoints"] = torch.rand(3, nk, dims, generator=g) * 0.2 + 0.4
    elif task == "obb":
        batch["bboxes"] = torch.cat([batch["bboxes"], torch.tensor([[0.3], [0.0], [1.0]])], 1)
    elif task == "classify":
        batch = {"img": batch["img"], "cls": torch.tensor([0, 1])}
    elif task == "semantic":
        batch = {"img": batch["img"], "semantic_mask": torch.randint(0, 2, (b, h, h), generator=g)}
    elif task == "depth":
        batch = {"img": batch["img"], "depth": torch.rand(b, h, h, generator=g) * 10 + 0.5}
    return batch


def train_step(model: nn.Module, task: str = "detect", imgsz: int = 64) -> tuple[torch.Tensor, object]:
    """One Ultralytics loss + backward of ``model`` for ``task`` on a generated batch; returns (loss, loss items)."""
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()
    model.train()
    loss, items = model.loss(task_batch(task, model, imgsz))
    loss.sum().backward()
    return loss, items


def detection_train_step(model: nn.Module, imgsz: int = 64) -> tuple[torch.Tensor, object]:
    """One Ultralytics detection loss + backward on a generated batch of two images; returns (loss, loss items)."""
    return train_step(model, "detect", imgsz)


def run_ddp_worker(model: str, data: str, worker_train: str, cwd: Path) -> str:
    """Generate Ultralytics' multi-GPU worker script for a DetectionTrainer on ``model`` and run it in a fresh
    interpreter on the CPU, ``BaseTrainer.train`` replaced by ``worker_train`` (the source of a ``train(self)``
    function printing what the worker has after start-up). Returns the worker's output."""
    import subprocess
    import sys
    import textwrap

    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    trainer = DetectionTrainer(
        overrides=dict(
            model=model, data=data, epochs=1, imgsz=64, device="cpu", workers=0, plots=False,
            project=str(cwd), name="ddp",
        )
    )  # fmt: skip
    trainer.model = trainer.get_model(cfg=model, verbose=False)
    script = generate_ddp_file(trainer)
    code = textwrap.dedent(worker_train) + textwrap.dedent(
        f"""
        import runpy
        import ultralytics.engine.trainer as T
        T.BaseTrainer.train = train
        runpy.run_path({script!r}, run_name="__main__")
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    try:
        p = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        for f in (script, script.replace(".py", ".pt")):
            if os.path.exists(f):
                os.remove(f)
    assert p.returncode == 0, f"STDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def fresh_process_output(
    ckpt: Path, x: torch.Tensor, cwd: Path, env: dict | None = None, fuse: bool = False, check: str = ""
) -> torch.Tensor:
    """Load ``ckpt`` in a fresh interpreter that only does ``from ultralytics import YOLO`` (plus ``check``, a line
    of Python run after loading), run ``x`` through the float eval model (fused if asked) and return its first
    output. ``env`` adds to the environment (e.g. ULTRALYTICS_SAFE_LOAD=1)."""
    import subprocess
    import sys
    import textwrap

    torch.save(x, cwd / "x.pt")
    code = f"""
        import sys, torch
        from ultralytics import YOLO
        m = YOLO({str(ckpt)!r}).model.float(){".fuse(verbose=False)" if fuse else ""}.eval()
        {check}
        with torch.no_grad():
            torch.save(m(torch.load({str(cwd / "x.pt")!r}))[0], {str(cwd / "y.pt")!r})
    """
    full_env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert p.returncode == 0, f"STDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return torch.load(cwd / "y.pt")
