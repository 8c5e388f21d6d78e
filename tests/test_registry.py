"""Registry and parser patch: round trip, channel rules under width scaling, backbone/Feature rows, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ScaledConv, toy_yaml
from ultralytics.nn import tasks
from ultralytics.utils.ops import make_divisible

import yolo_plugins
from yolo_plugins import PluginError, YAMLError, register_module, unregister_module
from yolo_plugins.integration.patch import recording


def build(cfg):
    return tasks.DetectionModel(copy.deepcopy(cfg), ch=3, verbose=False)


def test_duplicate_name_is_an_error(toy_modules):
    class ScaledConv2(ScaledConv):
        pass

    with pytest.raises(PluginError, match="already registered"):
        register_module(ScaledConv2, name="ScaledConv", channels="scaled")
    register_module(ScaledConv2, name="ScaledConv", channels="scaled", force=True)  # explicit replace works
    assert yolo_plugins.nn.registry.get_entry("ScaledConv").cls is ScaledConv2


def test_cannot_shadow_an_ultralytics_module():
    class Conv(torch.nn.Module):
        def __init__(self, c1):
            super().__init__()

    with pytest.raises(PluginError, match="Ultralytics already defines 'Conv'"):
        register_module(Conv)
    unregister_module("Conv")
    assert tasks.Conv.__module__.startswith("ultralytics")


def test_bad_rule_and_non_module():
    with pytest.raises(PluginError, match="unknown channel rule"):
        register_module(ScaledConv, channels="wider", name="X")
    with pytest.raises(PluginError, match="nn.Module subclass"):
        register_module(int, name="Y")


@pytest.mark.parametrize("scale", ["n", "x"])
def test_channel_rules_under_width_scaling(toy_modules, scale):
    cfg = toy_yaml(scale=scale)
    depth, width, max_ch = cfg["scales"][scale]
    m = build(cfg)
    layers = m.model
    bb = layers[0]
    assert bb.variant == {"n": "a", "x": "b"}[scale]
    assert [layers[i].index for i in (1, 2, 3)] == [1, 2, 3]
    # Feature rows: channels straight from the backbone's feature_info
    sc, rb, sc2 = layers[4], layers[5], layers[6]
    assert sc.c1 == bb.channels[1]
    assert sc.c2 == make_divisible(min(64, max_ch) * width, 8)
    assert rb.m[0].in_channels == bb.channels[2]
    assert rb.m[0].out_channels == make_divisible(min(128, max_ch) * width, 8)
    assert rb.n == max(round(3 * depth), 1)  # repeat=True: depth-scaled n passed as third argument
    assert sc2.c2 == make_divisible(min(256, max_ch) * width, 8) and sc2.conv.kernel_size == (1, 1)
    det = layers[-1]
    assert [c.in_channels for c in (s[0].conv for s in det.cv2)] == [sc.c2, rb.m[-1].out_channels, sc2.c2]
    # a real forward at a non-square size works and strides come from the backbone
    m.eval()
    with torch.no_grad():
        y = m(torch.zeros(1, 3, 64, 96))
    assert y[0].shape[1] == 4 + 3
    assert m.stride.tolist() == [8.0, 16.0, 32.0]


def test_same_rule_keeps_channels_and_kwargs(toy_modules):
    cfg = toy_yaml(head_extra=[[1, 1, "ContextAggregation", [{"reduction": 4}]]])
    m = build(cfg)
    ca = m.model[4]
    assert type(ca).__name__ == "ContextAggregation"
    assert ca.in_channels == m.model[0].channels[1] and ca.reduction == 4


def test_backbone_weights_argument(toy_modules, tmp_path):
    from conftest import ToyBackbone

    ref = ToyBackbone("a")
    path = tmp_path / "toy.pth"
    torch.save({"model": ref.state_dict()}, path)
    cfg = toy_yaml(
        backbone=[
            [-1, 1, "ToyBackbone", ["a", str(path)]],
            [0, 1, "Feature", [1]],
            [0, 1, "Feature", [2]],
            [0, 1, "Feature", [3]],
        ]
    )
    m = build(cfg)
    for k, v in ref.state_dict().items():
        assert torch.equal(m.model[0].state_dict()[k], v)


def test_shapes_table(toy_modules):
    from yolo_plugins.tools.shapes import format_shapes, model_shapes

    rows = model_shapes(toy_yaml(), imgsz="64,96")
    assert [r.index for r in rows] == list(range(8))
    assert rows[0].channels == [8, 16, 24, 40] and rows[0].stride == [4, 8, 16, 32]
    assert rows[0].shape == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 24, 4, 6), (1, 40, 2, 3)]
    assert rows[2].module.endswith("Feature") and rows[2].channels == 24 and rows[2].stride == 16
    assert rows[4].args == "[16, 16]"  # ScaledConv: c1 from Feature 1, c2 = 64 * 0.25
    assert rows[5].n == 1 and rows[5].args == "[24, 32, 1]"  # RepeatBlock: n inserted
    text = format_shapes(rows, "64,96")
    assert "output @ 64x96" in text and "(1, 16, 8, 12)" in text and "ToyBackbone" in text


def test_shapes_of_stock_yaml_matches_ultralytics():
    from yolo_plugins.tools.shapes import model_shapes

    rows = model_shapes("yolov8n.yaml", imgsz=64)
    assert rows[0].args == "[3, 16, 3, 2]" and rows[0].channels == 16 and rows[0].shape == (1, 16, 32, 32)
    assert rows[9].module.endswith("SPPF") and rows[9].stride == 32
    ref = tasks.DetectionModel("yolov8n.yaml", verbose=False)
    assert sum(r.params for r in rows) == sum(p.numel() for p in ref.parameters())


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "name,stock,plugin",
    [
        ("ContextAgregation", None, "ContextAggregation"),  # misspelt plugin module
        ("RepVit", None, "RepViT"),
        ("C2F", "C2f", None),  # misspelt stock module
        ("SPPFF", "SPPF", None),
    ],
)
@pytest.mark.parametrize("with_plugin_rows", [True, False])
def test_unknown_module_names_row_and_suggestions(toy_modules, name, stock, plugin, with_plugin_rows):
    """Misspelt plugin and stock names, in a YAML with plugin rows and in a stock-only YAML (which used to reach
    Ultralytics' bare KeyError): the row, the name and the closest stock and plugin names."""
    row = [-1, 1, name, [64]]
    if with_plugin_rows:
        cfg = toy_yaml(head_extra=[[1, 1, *row[2:]]])
        index = 4
    else:
        cfg = {"nc": 2, "backbone": [[-1, 1, "Conv", [16, 3, 2]], row], "head": [[-1, 1, "Classify", ["nc"]]]}
        index = 1
    with pytest.raises(yolo_plugins.UnknownModuleError) as e:
        build(cfg) if with_plugin_rows else tasks.ClassificationModel(cfg, verbose=False)
    msg = str(e.value)
    assert f"row {index} ({name}): unknown module '{name}'" in msg
    if stock:
        assert f"Closest Ultralytics modules: {stock}" in msg
    if plugin:
        assert f"closest yolo-plugins modules: {plugin}".lower() in msg.lower()
        assert plugin in msg.split("yolo-plugins modules:")[1]
    assert isinstance(e.value, KeyError) and isinstance(e.value, YAMLError)  # catchable as before, and as ours


def test_unknown_torch_nn_name():
    cfg = {"nc": 2, "backbone": [[-1, 1, "nn.Upsampel", [None, 2]]], "head": [[-1, 1, "Classify", ["nc"]]]}
    with pytest.raises(yolo_plugins.UnknownModuleError, match=r"row 0 \(nn.Upsampel\).*not in torch.nn.*Upsample"):
        tasks.ClassificationModel(cfg, verbose=False)


def test_wrong_arguments_name_row_and_signature(toy_modules):
    cfg = toy_yaml(head_extra=[[1, 1, "ContextAggregation", [1, 2, 3]]])
    with pytest.raises(YAMLError) as e:
        build(cfg)
    msg = str(e.value)
    assert "row 4 (ContextAggregation)" in msg and "(c1, reduction=1)" in msg and "too many" in msg


def test_scaled_rule_needs_channel_count(toy_modules):
    cfg = toy_yaml(head_extra=[[1, 1, "ScaledConv", ["wide"]]])
    with pytest.raises(YAMLError, match=r"row 4 \(ScaledConv\): the first argument must be the output channel count"):
        build(cfg)


def test_bad_variant_lists_valid_ones(toy_modules):
    cfg = toy_yaml(
        backbone=[[-1, 1, "ToyBackbone", ["c"]], [0, 1, "Feature", [1]], [0, 1, "Feature", [2]], [0, 1, "Feature", [3]]]
    )
    with pytest.raises(PluginError, match=r"row 0 \(ToyBackbone\).*no variant 'c'.*Valid variants: a, b"):
        build(cfg)


def test_variant_map_without_this_scale(toy_modules):
    cfg = toy_yaml(
        backbone=[
            [-1, 1, "ToyBackbone", [{"x": "b"}]],
            [0, 1, "Feature", [1]],
            [0, 1, "Feature", [2]],
            [0, 1, "Feature", [3]],
        ]
    )
    with pytest.raises(YAMLError, match="no entry for scale 'n'"):
        build(cfg)


def test_feature_index_out_of_range(toy_modules):
    cfg = toy_yaml(
        backbone=[[-1, 1, "ToyBackbone", ["a"]], [0, 1, "Feature", [1]], [0, 1, "Feature", [2]], [0, 1, "Feature", [4]]]
    )
    with pytest.raises(YAMLError, match=r"row 3 \(Feature\): feature index 4 does not exist.*has 4 features"):
        build(cfg)


def test_stock_row_reading_backbone_list(toy_modules):
    cfg = toy_yaml(
        backbone=[
            [-1, 1, "ToyBackbone", ["a"]],
            [-1, 1, "Conv", [16, 3, 2]],
            [0, 1, "Feature", [2]],
            [0, 1, "Feature", [3]],
        ]
    )
    with pytest.raises(YAMLError, match=r"row 1 \(Conv\) takes row 0 \(ToyBackbone a\).*\[0, 1, Feature, \[3\]\]"):
        build(cfg)


def test_feature_not_after_backbone(toy_modules):
    cfg = toy_yaml(head_extra=[[1, 1, "Feature", [0]]])
    with pytest.raises(YAMLError, match="must point at a backbone row"):
        build(cfg)


def test_create_backbone_errors(toy_modules):
    with pytest.raises(PluginError, match="unknown backbone 'toy_q'.*toy_a"):
        yolo_plugins.create_backbone("toy_q")
    bb = yolo_plugins.create_backbone("toy_b")
    assert bb.channels == [16, 32, 48, 80] and bb.strides == [4, 8, 16, 32]
    feats = bb(torch.zeros(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == bb.channels and [64 // f.shape[2] for f in feats] == bb.strides


# ----------------------------------------------------------------------------------------------------- init/fuse
def test_initialize_weights_leaves_plugin_modules_alone(toy_modules):
    class BNBlock(torch.nn.Module):
        def __init__(self, c1):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(c1)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(x))

    register_module(BNBlock)
    try:
        m = build(toy_yaml(head_extra=[[1, 1, "BNBlock", []]]))
        blk = m.model[4]
        assert blk.bn.eps == 1e-5 and blk.bn.momentum == 0.1 and blk.act.inplace is False
        stock_bn = m.model[-1].cv2[0][0].bn  # Ultralytics' own layers still get its settings
        assert stock_bn.eps == 1e-3 and stock_bn.momentum == 0.03
    finally:
        unregister_module("BNBlock")


def test_fuse_reaches_plugin_fusable(toy_modules):
    from yolo_plugins.nn.layers import Fusable

    class Rep(torch.nn.Module, Fusable):
        def __init__(self, c1):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(c1, c1, 3, padding=1), torch.nn.Conv2d(c1, c1, 1)
            self.fused = 0

        def forward(self, x):
            return self.a(x) + self.b(x) if hasattr(self, "b") else self.a(x)

        def fuse(self):
            if hasattr(self, "b"):
                with torch.no_grad():
                    self.a.weight[:, :, 1:2, 1:2] += self.b.weight
                    self.a.bias += self.b.bias
                del self.b
                self.fused += 1

    register_module(Rep)
    try:
        m = build(toy_yaml(head_extra=[[1, 1, "Rep", []]])).eval()
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            before = m(x)[0]
            m.fuse(verbose=False)
            m.fuse(verbose=False)
            after = m(x)[0]
        assert m.model[4].fused == 1 and not hasattr(m.model[4], "b")
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    finally:
        unregister_module("Rep")


def test_recording_is_per_call(toy_modules):
    with recording() as rec:
        build(toy_yaml())
    assert len(rec) == 8 and rec[0].plugin and not rec[-1].plugin
    with recording() as rec2:
        pass
    assert rec2 == []
