"""yolo_plugins.nn.repvit: variants, official checkpoint layout, re-parameterisation, YAML blocks and models."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import detection_train_step
from torch import nn

import yolo_plugins
import yolo_plugins.nn.repvit as R
from yolo_plugins import CheckpointError, PluginError, create_backbone
from yolo_plugins.nn.layers import Fusable
from yolo_plugins.nn.registry import get_entry

ROOT = Path(__file__).resolve().parents[1]
PAPER_PARAMS_M = {"m0_9": 5.10, "m1_0": 6.85, "m1_1": 8.29, "m1_5": 14.13, "m2_3": 23.05}  # 1000-class head
VARIANTS = list(PAPER_PARAMS_M)
_BUILT: dict[str, R.RepViT] = {}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def classification_model(variant: str) -> R.RepViT:
    """One random-weight num_classes=1000 model per variant for the whole module (the big ones take ~1 s)."""
    if variant not in _BUILT:
        torch.manual_seed(0)
        _BUILT[variant] = R.RepViT(variant, num_classes=1000).eval()
    return _BUILT[variant]


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affine (kept moderate so activations stay O(1)) and non-zero residual branches."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 1.0)
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.05)
    return model


def fuse_like_ultralytics(model: nn.Module) -> None:
    """What the patched ``model.fuse()`` does to plugin modules."""
    for m in reversed(list(model.modules())):
        if isinstance(m, Fusable):
            m.fuse()


def official_checkpoint(model: R.RepViT, path: Path) -> Path:
    """Write ``model`` as the official release does: {"model": state_dict} incl. classifier + distillation head."""
    torch.save({"model": model.state_dict(), "epoch": 299}, path)
    return path


# ------------------------------------------------------------------------------------------------------ variants
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_param_count_and_features(variant):
    m = classification_model(variant)
    assert round(n_params(m) / 1e6, 2) == PAPER_PARAMS_M[variant]
    assert m.strides == [4, 8, 16, 32]
    assert m.channels == list(R.RepViT.variants[variant]["embed_dims"])
    feats = m(torch.randn(1, 3, 64, 64))
    assert len(feats) == 4
    for f, c, s in zip(feats, m.channels, m.strides):
        assert tuple(f.shape) == (1, c, 64 // s, 64 // s)
    assert m.forward_head(feats).shape == (1, 1000)


def test_backbone_has_no_head_and_create_backbone():
    m = create_backbone("repvit_m0_9").eval()
    assert isinstance(m, R.RepViT) and m.variant == "m0_9" and m.name == "repvit_m0_9"
    assert not any(k.startswith("classifier.") for k in m.state_dict())
    head = classification_model("m0_9").classifier
    assert n_params(m) == n_params(classification_model("m0_9")) - n_params(head)
    assert [f.module for f in m.feature_info] == ["features.3", "features.7", "features.23", "features.26"]
    assert "repvit_m1_0" in yolo_plugins.list_backbones()
    with pytest.raises(PluginError, match="num_classes=0"):
        m.forward_head(m(torch.zeros(1, 3, 32, 32)))


def test_official_layout_names():
    """Spot-check the official state_dict names and shapes (features.* ModuleList, c/bn pairs, SE, head)."""
    m = R.RepViT("m0_9", num_classes=1000, distillation=True)
    sd = m.state_dict()
    expected = {
        "features.0.0.c.weight": (24, 3, 3, 3),
        "features.0.2.bn.running_var": (48,),
        "features.1.token_mixer.0.conv.c.weight": (48, 1, 3, 3),
        "features.1.token_mixer.0.conv1.weight": (48, 1, 1, 1),
        "features.1.token_mixer.0.bn.weight": (48,),
        "features.1.token_mixer.1.fc1.weight": (16, 48, 1, 1),
        "features.1.channel_mixer.m.0.c.weight": (96, 48, 1, 1),
        "features.1.channel_mixer.m.2.bn.weight": (48,),
        "features.4.token_mixer.0.c.weight": (48, 1, 3, 3),
        "features.4.token_mixer.2.c.weight": (96, 48, 1, 1),
        "features.4.channel_mixer.m.0.c.weight": (192, 96, 1, 1),
        "classifier.classifier.bn.weight": (384,),
        "classifier.classifier.l.weight": (1000, 384),
        "classifier.classifier_dist.l.bias": (1000,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "features.2.token_mixer.1.fc1.weight" not in sd  # SE on alternate blocks only
    assert "features.3.token_mixer.1.fc1.weight" not in sd  # ... and never on a stage's last block
    assert n_params(m) - n_params(classification_model("m0_9")) == 1000 * 384 + 1000 + 2 * 384


def test_detection_out_indices_and_bad_arguments():
    m = R.RepViT("m1_1", out_indices=[2, 6, 20, 24]).eval()  # the official Mask R-CNN config
    assert m.strides == [4, 8, 16, 32] and m.channels == [64, 128, 256, 512]
    assert [f.shape[1] for f in m(torch.zeros(1, 3, 32, 32))] == m.channels
    with pytest.raises(PluginError, match="out_indices"):
        R.RepViT("m0_9", out_indices=[3, 99])
    with pytest.raises(PluginError, match="feature_info"):
        R.RepViT("m0_9", out_indices=[2, 3])  # same stride twice
    with pytest.raises(PluginError, match="Did you mean 'm1_0'"):
        R.RepViT("m10")
    with pytest.raises(PluginError, match=r"\(B, 3, H, W\)"):
        R.RepViT("m0_9")(torch.zeros(1, 1, 32, 32))
    with pytest.raises(PluginError, match="num_classes"):
        R.RepViT("m0_9", num_classes=-1)


def test_odd_input_size():
    m = classification_model("m0_9")
    feats = m(torch.randn(1, 3, 65, 47))
    assert [tuple(f.shape[2:]) for f in feats] == [(17, 12), (9, 6), (5, 3), (3, 2)]


# --------------------------------------------------------------------------------------------------- checkpoints
def test_official_checkpoint_loads_into_backbone(tmp_path):
    torch.manual_seed(1)
    src = randomize(R.RepViT("m0_9", num_classes=1000, distillation=True)).eval()
    path = official_checkpoint(src, tmp_path / "repvit_m0_9_distill_300e.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, want_logits = src(x), src.forward_head(src(x))

    bb = create_backbone("repvit_m0_9", weights=path).eval()  # strict: every backbone tensor must come from the file
    with torch.no_grad():
        for a, b in zip(bb(x), want):
            assert torch.equal(a, b)
    assert set(bb.state_dict()) == {k for k in src.state_dict() if not k.startswith("classifier.")}

    full = R.RepViT("m0_9", weights=path, num_classes=1000, distillation=True).eval()
    with torch.no_grad():
        assert torch.equal(full.forward_head(full(x)), want_logits)
    single = R.RepViT("m0_9", weights=path, num_classes=1000).eval()  # distillation head dropped
    assert torch.equal(single.classifier.classifier.l.weight, src.classifier.classifier.l.weight)


def test_dense_prediction_checkpoint_layout(tmp_path):
    """Official mmdet/mmseg checkpoints: backbone.features.* (+ neck/head keys that are dropped)."""
    src = randomize(R.RepViT("m0_9")).eval()
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 96, 1, 1)
    torch.save({"state_dict": sd, "meta": {}}, tmp_path / "mask_rcnn.pth")
    bb = R.RepViT("m0_9", weights=tmp_path / "mask_rcnn.pth").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(bb(x), src(x)))


def test_checkpoint_filter_fn_is_pure():
    t = torch.zeros(1)
    sd = {
        "features.0.0.c.weight": t,
        "classifier.classifier.l.weight": t,
        "classifier.classifier_dist.l.weight": t,
    }
    before = dict(sd)
    assert list(R.RepViT.checkpoint_filter_fn(sd, R.RepViT("m0_9"))) == ["features.0.0.c.weight"]
    head = R.RepViT.checkpoint_filter_fn(sd, classification_model("m0_9"))
    assert list(head) == ["features.0.0.c.weight", "classifier.classifier.l.weight"]
    assert sd == before


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone("repvit_m0_9", weights=tmp_path / "missing.pth")
    (tmp_path / "notes.pth").write_bytes(b"these are not the weights you are looking for\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        R.RepViT("m0_9", weights=tmp_path / "notes.pth")
    other = official_checkpoint(classification_model("m1_0"), tmp_path / "repvit_m1_0.pth")
    with pytest.raises(CheckpointError, match=r"does not fit repvit_m0_9: '.*' has shape .*another variant"):
        R.RepViT("m0_9", weights=other)
    deeper = official_checkpoint(classification_model("m1_1"), tmp_path / "repvit_m1_1.pth")  # same widths as m1_5
    with pytest.raises(CheckpointError, match="repvit_m1_5"):
        R.RepViT("m1_5", weights=deeper)


# ------------------------------------------------------------------------------------------------------- fusing
def test_fuse_backbone_equivalent_and_idempotent():
    torch.manual_seed(2)
    m = randomize(R.RepViT("m0_9", num_classes=1000, distillation=True)).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        feats, logits = m(x), m.forward_head(m(x))
    params, modules = n_params(m), len(list(m.modules()))
    fuse_like_ultralytics(m)
    assert n_params(m) < params and len(list(m.modules())) < modules
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    with torch.no_grad():
        fused = m(x)
        for a, b in zip(fused, feats):
            assert (a - b).abs().max().item() <= 1e-4
        assert (m.forward_head(fused) - logits).abs().max().item() <= 1e-4
    state = copy.deepcopy(m.state_dict())
    m.fuse()
    fuse_like_ultralytics(m)
    assert m.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(m(x), fused))


def test_fused_parameters_follow_requires_grad():
    """Ultralytics' exporter switches gradients off and then fuses: the re-parameterised layers must stay frozen (a
    traced TorchScript model's outputs required grad), while fusing a trainable model keeps it trainable."""
    from ultralytics import YOLO

    model = YOLO("yolov8n-repvit.yaml").model.eval()
    for p in model.parameters():
        p.requires_grad = False
    model.fuse()
    assert not any(p.requires_grad for p in model.parameters())
    assert not model(torch.zeros(1, 3, 64, 64))[0].requires_grad  # what TorchScript traces
    m = R.RepViT("m0_9", num_classes=10, distillation=True)  # the head's BN-Linear too
    m.fuse()
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize(
    "make, shape_in, shape_out",
    [
        (lambda: R.RepViTBlock(32), (2, 32, 15, 17), (2, 32, 15, 17)),
        (lambda: R.RepViTBlock(32, False), (2, 32, 8, 8), (2, 32, 8, 8)),
        (lambda: R.RepViTDown(32, 64), (2, 32, 15, 17), (2, 64, 8, 9)),
        (lambda: R.RepViTDown(32, 48, True, 5), (2, 32, 16, 16), (2, 48, 8, 8)),
        (lambda: R.C2fRepViT(32, 64, 3), (2, 32, 12, 10), (2, 64, 12, 10)),
    ],
)
def test_block_shapes_and_fuse(make, shape_in, shape_out):
    torch.manual_seed(3)
    blk = randomize(make()).eval()
    x = torch.randn(shape_in)
    with torch.no_grad():
        y = blk(x)
    assert tuple(y.shape) == shape_out
    params = n_params(blk)
    blk.fuse()
    blk.fuse()
    assert n_params(blk) < params
    assert not any(isinstance(b, nn.BatchNorm2d) for b in blk.modules())
    with torch.no_grad():
        assert (blk(x) - y).abs().max().item() <= 1e-4


def test_blocks_structure_and_registry():
    c2f = R.C2fRepViT(16, 32, 4)
    assert [isinstance(b.token_mixer[1], R.SqueezeExcite) for b in c2f.m] == [True, False, True, False]
    assert not isinstance(R.RepViTBlock(16, se=False).token_mixer[1], R.SqueezeExcite)
    assert (get_entry("RepViTBlock").rule, get_entry("RepViTDown").rule) == ("same", "scaled")
    assert (get_entry("C2fRepViT").rule, get_entry("C2fRepViT").repeat) == ("scaled", True)
    assert get_entry("RepViT").rule == "backbone"
    with pytest.raises(PluginError, match="odd"):
        R.RepViTDown(16, 32, k=2)
    with pytest.raises(PluginError, match="positive ints"):
        R.RepViTBlock(0)


def test_training_mode_backward_with_drop_path():
    m = R.RepViT("m0_9", drop_path_rate=0.1).train()
    rates = [b.channel_mixer.drop_path.p for b in m.features[2:]]
    assert rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    sum(f.mean() for f in m(torch.randn(2, 3, 32, 32))).backward()
    assert m.features[1].token_mixer[0].conv.c.weight.grad.abs().sum() > 0


def test_benchmark_script_runs():
    spec = importlib.util.spec_from_file_location("bench_repvit_fuse", ROOT / "scripts" / "bench_repvit_fuse.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.main(["--variant", "m0_9", "--imgsz", "32", "48", "--iters", "1", "--warmup", "0"])
    assert r["input"] == (1, 3, 32, 48) and r["fused_ms"] > 0 and r["max_abs_diff"] < 1e-4
    assert r["params"][1] < r["params"][0] and r["modules"][1] < r["modules"][0]


# ------------------------------------------------------------------------------------------------------- YAMLs
YAMLS = ["yolov8", "yolov5", "yolo11"]


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_builds_and_runs(name, registered):
    from ultralytics import YOLO

    model = YOLO(str(ROOT / "model_yamls" / f"{name}n-repvit.yaml")).model.eval()  # scale n -> RepViT m0_9
    bb = model.model[0]
    assert isinstance(bb, R.RepViT) and bb.variant == "m0_9"
    assert bb.features[1].token_mixer[0].bn.eps == 1e-5  # Ultralytics' BN re-init leaves the backbone alone
    x = torch.randn(1, 3, 640, 640)
    with torch.no_grad():
        y = model(x)[0]
        assert y.shape == (1, 84, 8400)
        assert model(torch.randn(1, 3, 480, 640))[0].shape == (1, 84, 6300)
        randomize(bb)
        y = model(x)[0]
        model.fuse(verbose=False)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert (model(x)[0] - y).abs().max().item() <= 1e-3 * y.abs().max().item()


def test_yaml_training_step(registered):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(4)
    model = DetectionModel(str(ROOT / "model_yamls" / "yolov8n-repvit.yaml"), nc=2, verbose=False)
    loss, items = detection_train_step(model, imgsz=128)
    assert torch.isfinite(loss).all() and len(items) == 3  # box, cls, dfl
    bb = model.model[0]
    grads = [bb.features[1].token_mixer[0].conv.c.weight.grad, bb.features[-1].channel_mixer.m[2].bn.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def _yaml_dict(name: str) -> dict:
    from yolo_plugins.integration.compat import load_yaml

    d = load_yaml(ROOT / "model_yamls" / f"{name}-repvit.yaml")
    d["scale"] = "n"
    return d


def test_yaml_official_weights_row(tmp_path, registered):
    """[-1, 1, RepViT, [m0_9, {weights: ...}]]: the loaded backbone computes what the checkpoint's model computes."""
    from ultralytics.nn.tasks import DetectionModel

    src = randomize(R.RepViT("m0_9", num_classes=1000, distillation=True), seed=5).eval()
    path = official_checkpoint(src, tmp_path / "repvit_m0_9_distill_300e.pth")
    d = _yaml_dict("yolov8")
    d["backbone"][0] = [-1, 1, "RepViT", ["m0_9", {"weights": str(path), "drop_path_rate": 0.05}]]
    bb = DetectionModel(d, verbose=False).eval().model[0]
    assert bb.features[-1].channel_mixer.drop_path.p == pytest.approx(0.05)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(bb(x), src(x)))


def test_yaml_neck_blocks(registered):
    """RepViTBlock (same), RepViTDown (scaled, stride 2) and C2fRepViT (scaled, repeat) in a YOLOv8 neck."""
    from ultralytics.nn.tasks import DetectionModel

    d = _yaml_dict("yolov8")
    d["head"][2] = [-1, 3, "C2fRepViT", [512]]  # 7
    d["head"][5] = [-1, 2, "RepViTBlock", [False]]  # 10 (P3): Ultralytics repeats it 1x at depth 0.33
    d["head"][6] = [-1, 1, "RepViTDown", [256]]  # 11
    model = DetectionModel(d, verbose=False).eval()
    m7, m10, m11 = model.model[7], model.model[10], model.model[11]
    assert isinstance(m7, R.C2fRepViT) and len(m7.m) == 1 and m7.cv2.conv.out_channels == 128  # 512 * 0.25
    assert isinstance(m10, R.RepViTBlock) and not isinstance(m10.token_mixer[1], R.SqueezeExcite)
    assert isinstance(m11, R.RepViTDown) and m11.token_mixer[2].c.out_channels == 64  # 256 * 0.25
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)[0]
        assert y.shape == (1, 84, 84)
        model.fuse(verbose=False)
        assert (model(x)[0] - y).abs().max().item() <= 1e-3 * y.abs().max().item()
