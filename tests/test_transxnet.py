"""yolo_plugins.nn.transxnet: variants, official checkpoint layout, optimised vs naive, any input, YAML models."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import detection_train_step
from oracles.transxnet_naive import naive_block, naive_forward
from torch import nn

import yolo_plugins
import yolo_plugins.nn.transxnet as X
from yolo_plugins import CheckpointError, PluginError, create_backbone
from yolo_plugins.nn.layers import exporting_with
from yolo_plugins.nn.registry import get_entry

ROOT = Path(__file__).resolve().parents[1]
PAPER_PARAMS_M = {"t": 12.83, "s": 26.86, "b": 48.01}  # official classification models (1000-class head)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, position tables and layer scales (kept moderate so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "relative_pos_enc" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif "layer_scale" in name and name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(n, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny() -> X.TransXNet:
    torch.manual_seed(0)
    return randomize(X.TransXNet("t")).eval()


# ------------------------------------------------------------------------------------------------------ variants
@pytest.mark.parametrize("variant", list(PAPER_PARAMS_M))
def test_paper_param_counts(variant):
    torch.manual_seed(0)
    m = X.TransXNet(variant, num_classes=1000)
    assert round(n_params(m) / 1e6, 2) == PAPER_PARAMS_M[variant]
    assert m.channels == X.TransXNet.variants[variant]["embed_dims"]
    assert not any(k.startswith("norm") for k in m.state_dict())  # classification layout: no dense output norms


def test_features_match_feature_info(tiny):
    assert tiny.strides == [4, 8, 16, 32] and tiny.channels == [48, 96, 224, 448]
    assert [f.module for f in tiny.feature_info] == ["norm0", "norm2", "norm4", "norm6"]
    with torch.no_grad():
        feats = tiny(torch.randn(2, 3, 64, 96))
    for f, c, s in zip(feats, tiny.channels, tiny.strides):
        assert tuple(f.shape) == (2, c, 64 // s, 96 // s)


@pytest.mark.parametrize("hw", [(45, 70), (33, 33), (97, 31)])
def test_odd_sizes(tiny, hw):
    """Sizes not divisible by 32: each strided conv rounds up, as in the official model."""
    with torch.no_grad():
        feats = tiny(torch.randn(1, 3, *hw))
    h, w = ((s - 1) // 4 + 1 for s in hw)  # 7x7 stride-4 stem, padding 3
    for i, (f, c) in enumerate(zip(feats, tiny.channels)):
        if i:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3x3 stride-2 downsampling, padding 1
        assert tuple(f.shape) == (1, c, h, w) and torch.isfinite(f).all()


def test_batch_items_are_independent(tiny):
    """IDConv's per-sample kernels: item 0 of a batch of 2 equals the same image alone (batch 1)."""
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        both, one = tiny(x), tiny(x[:1])
    for a, b in zip(both, one):
        torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0][0], both[0][1])


def test_create_backbone_and_errors():
    m = create_backbone("transxnet_t")
    assert isinstance(m, X.TransXNet) and m.name == "transxnet_t"
    assert not hasattr(m, "classifier")
    with pytest.raises(PluginError, match="Valid variants"):
        X.TransXNet("tiny")
    with pytest.raises(PluginError, match="forward_head"):
        m.forward_head([])


def test_classification_head():
    torch.manual_seed(0)
    m = X.TransXNet("t", num_classes=10).eval()
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 64, 64))
        assert m.forward_head(feats).shape == (1, 10)


# ----------------------------------------------------------------------------------- optimised == naive oracle
def test_optimised_matches_naive(tiny):
    x = torch.randn(2, 3, 100, 132)
    with torch.no_grad():
        fast = tiny(x)
        cached = tiny(x)  # second pass: resized position biases served from the cache
    ref = naive_forward(tiny.state_dict(), tiny.config("t"), x)
    for a, b, c in zip(fast, cached, ref):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, a, atol=0, rtol=0)


def test_fused_attention_matches_written_out_attention_with_gradients():
    """OSRA through PyTorch's fused attention (eager) equals the written-out softmax of exported graphs, in values and
    in the gradients of input, weights and the learnable position bias (training with a batch of 2)."""
    torch.manual_seed(0)
    m = X.OSRA(32, num_heads=2, sr_ratio=2).train()
    bias = torch.randn(1, 2, 12 * 16, 36, requires_grad=True)
    x = torch.randn(2, 32, 12, 16, requires_grad=True)
    grads = []
    for exporting in (False, True):
        X_tracing = X.tracing
        X.tracing = lambda: exporting
        try:
            y = m(x, bias)
        finally:
            X.tracing = X_tracing
        g = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [x, bias, m.q.weight])
        grads.append((y, *g))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_position_cache_follows_parameter_updates():
    torch.manual_seed(1)
    m = randomize(X.TransXNet("t")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        m.relative_pos_enc[0].mul_(-2.0)  # in-place change: the cached resize must be dropped
        after = m(x)
    assert not torch.allclose(before[0], after[0])
    ref = naive_forward(m.state_dict(), m.config("t"), x)
    for a, b in zip(after, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # never pickled / deep-copied (Ultralytics checkpoints pickle the model, EMA deep-copies it)
    assert len(m._pos_cache.store) > 0
    assert len(copy.deepcopy(m)._pos_cache.store) == 0
    assert len(pickle.loads(pickle.dumps(m))._pos_cache.store) == 0


def test_block_matches_naive():
    torch.manual_seed(2)
    blk = randomize(X.TransXNetBlock(32, sr_ratio=2, num_heads=2, pos_size=6)).eval()
    x = torch.randn(2, 32, 13, 19)
    with torch.no_grad():
        y = blk(x)
    sd = {"blk." + k: v for k, v in blk.state_dict().items()}
    ref = naive_block(sd, "blk", x, 2, 2, sd["blk.token_mixer.relative_pos_enc"])
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ train / autocast / export
def test_train_mode_backward():
    torch.manual_seed(0)
    m = X.TransXNet("t", drop_path_rate=0.1).train()
    feats = m(torch.randn(2, 3, 64, 64))
    sum(f.float().square().mean() for f in feats).backward()
    assert m.relative_pos_enc[0].grad is not None and m.relative_pos_enc[0].grad.abs().sum() > 0
    assert m.network[0][0].token_mixer.local_unit.weight.grad.abs().sum() > 0
    assert len(m._pos_cache.store) == 0  # nothing cached while gradients are needed
    # batch 1 (IDConv's global branch is 1x1, and at 32 px so is OSRA's reduced map): no BatchNorm error
    feats = m(torch.randn(1, 3, 32, 48))
    sum(f.square().mean() for f in feats).backward()
    blk = X.TransXNetBlock(16).train()
    assert blk(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)


def test_bf16_autocast(tiny):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tiny(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny(x)
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().mean() < 0.03 * b.abs().mean()  # ~1% measured; official bf16: ~1.5%


@pytest.mark.slow
def test_onnx_matches_onnxruntime(tiny):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    x = torch.randn(1, 3, 64, 96)
    f = io.BytesIO()
    torch.onnx.export(tiny, (x,), f, opset_version=17, input_names=["images"], dynamo=False)
    outs = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = tiny(x)
    for o, r in zip(outs, ref):
        torch.testing.assert_close(torch.from_numpy(o), r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "q0,k0,nq,nk", [(3136, 49, 25600, 400), (784, 49, 6400, 400), (3136, 49, 15360, 240), (49, 9, 196, 12)]
)
def test_graph_resize_equals_bicubic(q0, k0, nq, nk):
    """Exported graphs resize the position tables at run time from small periodic matrices (TransXNet-T's stage 1 and
    2 tables at 640 and 384x640): the bicubic resize in exact arithmetic, i.e. within 1e-6 of float64 F.interpolate;
    PyTorch's float32 resize drifts from it (its source positions are float32) by up to 3e-4 of the table's scale."""
    torch.manual_seed(0)
    enc = torch.randn(1, 2, q0, k0)
    assert X._periodic_plan(q0, nq, nq * nk // 8) is not None
    out = X.graph_resize_pos_enc(enc, nq, nk)
    exact = X.resize_pos_enc(enc.double(), nq, nk)
    assert (out.double() - exact).abs().max() < 1e-6 * exact.abs().max()
    assert (out - X.resize_pos_enc(enc, nq, nk)).abs().max() < 5e-4 * exact.abs().max()


def test_graph_resize_falls_back_without_a_period():
    """Sizes whose query axis has no short period (gcd 1) keep the plain resize (folded into a constant)."""
    enc = torch.randn(1, 1, 49, 9)
    assert X._periodic_plan(49, 97, 97 * 4 // 8) is None
    assert torch.equal(X.graph_resize_pos_enc(enc, 97, 4), X.resize_pos_enc(enc, 97, 4))


def _slim_onnx_outputs(model: nn.Module, x: torch.Tensor):
    """``model`` exported to ONNX and simplified by onnxslim (as Ultralytics' exporter does): the ONNX model and its
    ONNX Runtime outputs on ``x``."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    onnxslim = pytest.importorskip("onnxslim")
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, opset_version=17, input_names=["images"], dynamo=False)
    slim = onnxslim.slim(onnx.load_from_string(f.getvalue()))
    sess = ort.InferenceSession(slim.SerializeToString(), providers=["CPUExecutionProvider"])
    return slim, sess.run(None, {"images": x.numpy()})


@pytest.mark.export  # ~50 s (export + onnxslim of the whole backbone)
def test_onnx_resizes_position_tables_at_run_time(tiny):
    """At 256x256 the stage 1 and 2 tables are resized in the graph (no (heads, N, M) constant in the file) and the
    graph equals PyTorch."""
    x = torch.randn(1, 3, 256, 256)
    model, outs = _slim_onnx_outputs(tiny, x)
    shapes = {tuple(t.dims) for t in model.graph.initializer}
    assert (1, 1, 64 * 64, 8 * 8) not in shapes and (1, 2, 32 * 32, 8 * 8) not in shapes
    with torch.no_grad():
        for o, r in zip(outs, tiny(x)):
            assert (torch.from_numpy(o) - r).abs().max() < 1e-3 * r.abs().max()


@pytest.mark.export  # ~50 s (export + onnxslim of the whole backbone)
def test_simplified_onnx_stores_each_stage_bias_once(tiny):
    """Graph simplifiers fold the resized position tables into constants: once per stage, not once per block (a cast
    per block made onnxslim store a copy per block: 334 MB for yolov8n-transxnet at 640, whose weights are 58 MB)."""
    x = torch.randn(1, 3, 64, 96)
    model, outs = _slim_onnx_outputs(tiny, x)
    tables = [tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] == 1]
    for i in range(4):
        heads = tiny.network[2 * i][0].token_mixer.global_unit.num_heads
        queries = (16 >> i) * (24 >> i)  # the stage's H * W
        assert len([t for t in tables if t[1:3] == (heads, queries)]) <= 1, (i, tables)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(outs[0]), tiny(x)[0], atol=1e-4, rtol=1e-4)


def test_onnx_block_batch2():
    """A standalone block (own position table, 7x7 pooling that does not divide the size) at batch 2."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    blk = randomize(X.TransXNetBlock(16, pos_size=5)).eval()
    x = torch.randn(2, 16, 10, 15)
    f = io.BytesIO()
    torch.onnx.export(blk, (x,), f, opset_version=17, input_names=["x"], dynamo=False)
    (out,) = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), blk(x), atol=1e-4, rtol=1e-4)


def _computed_conv_weights(ep) -> list[str]:
    """Convolutions of an ExportedProgram whose weight is computed in the graph (not a parameter or constant)."""
    sig = ep.graph_signature
    held = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers) | set(sig.inputs_to_lifted_tensor_constants)
    convs = [n for n in ep.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    return [list(n.meta["nn_module_stack"].values())[-1][0] for n in convs if n.args[1].name not in held]


@pytest.mark.parametrize("grad", [True, False], ids=["autograd-on", "no-grad"])
@pytest.mark.parametrize("pos_size, hw", [(5, 10), (7, 20)], ids=["periodic-plan", "no-plan"])
def test_torch_export_after_the_dry_run_holds_merged_kernels_as_constants(grad, pos_size, hw):
    """``torch.export`` for ExecuTorch (and LiteRT) inside an export whose eager dry run came first: every merged or
    folded kernel is a constant (XNNPACK delegates only convolutions with constant weights), only IDConv's per-image
    kernel is computed in the graph; the position table is resized by two small products with constant operands
    ("periodic-plan": 5x5 -> 10x10 queries) or is itself a constant ("no-plan": 7x7 -> 20x20, no short period), never
    by a bicubic resize (ExecuTorch gathers it: 1.1 s per block at 640); the GroupNorms are written out (ExecuTorch's
    own was off by 2.8e-4 at 640). Equal outputs; nothing is left on the modules afterwards. Without the dry run, or in
    an export to another format, the kernels are built in the graph, equally. Ultralytics' exporter runs with
    autograd on and its parameters frozen ("autograd-on")."""
    torch.manual_seed(4)
    blk = randomize(X.TransXNetBlock(16, pos_size=pos_size)).eval().requires_grad_(False)
    x = torch.randn(1, 16, hw, hw)
    args = SimpleNamespace(format="executorch", dynamic=False)
    with torch.set_grad_enabled(grad):
        ref = blk(x)
        with exporting_with(args):
            blk(x)  # the exporter's dry run
            ep = torch.export.export(blk, (x,))
        with exporting_with(args):
            bare = torch.export.export(blk, (x,))
        with exporting_with(SimpleNamespace(format="onnx", dynamic=False)):  # a traced format: no records used
            blk(x)
            other = torch.export.export(blk, (x,))
        ops = {str(n.target) for n in ep.graph.nodes}
        assert len(_computed_conv_weights(other)) == len(_computed_conv_weights(bare))
        assert _computed_conv_weights(ep) == ["token_mixer.local_unit"], _computed_conv_weights(ep)
        assert len(_computed_conv_weights(bare)) > 3
        assert "aten.upsample_bicubic2d.vec" not in ops and "aten.group_norm.default" not in ops, ops
        assert "aten.upsample_bicubic2d.vec" in {str(n.target) for n in bare.graph.nodes}
        torch.testing.assert_close(ep.module()(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bare.module()(x), ref, atol=1e-5, rtol=1e-5)
    assert not [m for m in blk.modules() if "_yolo_plugins_export_constants" in m.__dict__]
    assert "_yolo_plugins_export_constants" not in X.resize_operands.__dict__


def test_exported_group_norm_sums_in_two_levels():
    """The written-out GroupNorm of ``torch.export`` graphs equals ``nn.GroupNorm`` (one and several groups)."""
    torch.manual_seed(0)
    for groups in (1, 4):
        norm = nn.GroupNorm(groups, 16).eval()
        nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
        x = torch.randn(2, 16, 24, 40) * 3 + 5  # a large mean: a one-pass variance would cancel

        class Wrapped(nn.Module):
            def forward(self, t):
                return X._group_norm(norm, t)

        ep = torch.export.export(Wrapped(), (x,))
        assert "aten.group_norm.default" not in {str(n.target) for n in ep.graph.nodes}
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), norm(x), atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------------- checkpoints
def test_official_checkpoint_round_trip(tmp_path):
    """An official-layout ImageNet checkpoint ({"model": sd} with classifier, no dense norms) loads strictly."""
    torch.manual_seed(0)
    cls = randomize(X.TransXNet("t", num_classes=1000)).eval()
    path = tmp_path / "transx-t.pth.tar"
    torch.save({"model": cls.state_dict(), "epoch": 299}, path)
    m = create_backbone("transxnet_t", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw, feats = cls(x), m(x)
    for r, f in zip(raw, feats):  # the filled-in output norms are identity-affine GroupNorms
        torch.testing.assert_close(f, nn.functional.group_norm(r, 1), atol=1e-5, rtol=1e-5)
    # and a dense-prediction checkpoint (with norm0..6) round-trips exactly
    torch.save({"state_dict": m.state_dict()}, tmp_path / "dense.pth")
    m2 = create_backbone("transxnet_t", weights=tmp_path / "dense.pth").eval()
    with torch.no_grad():
        for a, b in zip(m2(x), feats):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_checkpoint_filter_fn_is_pure():
    m = X.TransXNet("t")
    cls_sd = X.TransXNet("t", num_classes=1000).state_dict()
    before = dict(cls_sd)
    out = X.TransXNet.checkpoint_filter_fn(cls_sd, m)
    assert cls_sd.keys() == before.keys()
    assert not any(k.startswith("classifier.") for k in out)
    assert set(out) == set(m.state_dict())
    assert torch.equal(out["norm6.weight"], torch.ones(448)) and torch.equal(out["norm6.bias"], torch.zeros(448))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone("transxnet_t", weights=tmp_path / "missing.pth")
    txt = tmp_path / "notes.txt"
    txt.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        create_backbone("transxnet_t", weights=txt)
    torch.save({"model": X.TransXNet("s").state_dict()}, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="shape"):
        create_backbone("transxnet_t", weights=tmp_path / "s.pth")


# ------------------------------------------------------------------------------------------------------- blocks
def test_registry_entries():
    assert get_entry("TransXNet").rule == "backbone"
    assert get_entry("TransXNetBlock").rule == "same"
    assert get_entry("DMixer").rule == "same"
    e = get_entry("C2fTransXNet")
    assert e.rule == "scaled" and e.repeat


@pytest.mark.parametrize("hw", [(9, 14), (16, 16), (3, 5)])
def test_blocks_any_size(hw):
    torch.manual_seed(0)
    x = torch.randn(2, 32, *hw)
    for blk in (X.TransXNetBlock(32), X.TransXNetBlock(32, pos_size=7, num_heads=4), X.DMixer(32, sr_ratio=4)):
        for train in (True, False):
            y = blk.train(train)(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
    csp = X.C2fTransXNet(32, 48, 2, sr_ratio=2, num_heads=2)
    assert len(csp.m) == 2 and csp(x).shape == (2, 48, *hw)


def test_block_bad_arguments():
    with pytest.raises(PluginError, match="num_heads"):
        X.TransXNetBlock(30, num_heads=4)
    with pytest.raises(PluginError, match="even"):
        X.DMixer(17)


# ------------------------------------------------------------------------------------------------------- YAMLs
def _yolo(yaml: str):
    from ultralytics import YOLO

    assert yolo_plugins.is_registered()
    return YOLO(str(ROOT / "model_yamls" / yaml))


@pytest.mark.parametrize("stem", ["yolov5", "yolo11"])
def test_yaml_builds(stem):
    model = _yolo(f"{stem}n-transxnet.yaml").model.eval()
    assert isinstance(model.model[0], X.TransXNet) and model.model[0].variant == "t"
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 64, 96))[0]
    assert y.shape == (1, 84, (64 * 96) // 64 + (64 * 96) // 256 + (64 * 96) // 1024)


@pytest.mark.slow
def test_yolov8_yaml_640_and_train_step():
    model = _yolo("yolov8n-transxnet.yaml").model
    assert [type(m).__name__ for m in model.model[:4]] == ["TransXNet", "Feature", "Feature", "Feature"]
    model.eval()
    with torch.no_grad():
        for h, w in ((640, 640), (640, 480)):
            y = model(torch.zeros(1, 3, h, w))[0]
            assert y.shape == (1, 84, sum((h // s) * (w // s) for s in (8, 16, 32)))
    loss, _ = detection_train_step(model)  # one training step on a synthetic batch
    assert torch.isfinite(loss).all()
    assert model.model[0].relative_pos_enc[1].grad is not None
