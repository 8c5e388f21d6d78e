"""TransNeXt: shapes, parameter counts, official checkpoint layout, odd inputs, autocast, ONNX, naive oracle, caches,
neck blocks and YAML models. Small inputs; the official-code comparison lives outside the repo (see the module doc)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from conftest import detection_train_step

import yolo_plugins
import yolo_plugins.nn.transnext as T
from yolo_plugins import CheckpointError, PluginError, create_backbone
from yolo_plugins.nn.registry import get_entry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from oracles import transnext_naive as naive

PAPER_PARAMS_M = {"micro": 12.81, "tiny": 28.26, "small": 49.74, "base": 89.72}


def _ceil(n: int, s: int) -> int:
    return -(-n // s)


@pytest.fixture(scope="module")
def micro() -> T.TransNeXt:
    torch.manual_seed(0)
    return T.TransNeXt("micro").eval()


def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Move every parameter away from its init (so that zero-initialised biases, temperatures etc. matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


# ---------------------------------------------------------------------------------------------------------------- shapes


def test_feature_info_micro(micro):
    assert micro.channels == [48, 96, 192, 384]
    assert micro.strides == [4, 8, 16, 32]
    assert [f.module for f in micro.feature_info] == ["norm1", "norm2", "norm3", "norm4"]
    assert get_entry("TransNeXt").rule == "backbone"
    assert "transnext_micro" in yolo_plugins.list_backbones() or T.TransNeXt.family == "transnext"


@pytest.mark.parametrize("hw", [(64, 96), (200, 328), (40, 40), (33, 17)])
@pytest.mark.parametrize("batch,train", [(1, False), (2, True)])
def test_features_any_size(micro, hw, batch, train):
    m = micro.train(train)
    try:
        x = torch.randn(batch, 3, *hw)
        with torch.set_grad_enabled(train):
            out = m(x)
        assert len(out) == 4
        for f, c, s in zip(out, m.channels, m.strides):
            assert f.shape == (batch, c, _ceil(hw[0], s), _ceil(hw[1], s))
            assert torch.isfinite(f).all()
        if train:
            sum(f.mean() for f in out).backward()
            assert m.block1[0].attn.learnable_tokens.grad is not None
            m.zero_grad(set_to_none=True)
    finally:
        m.eval()


def test_bad_input_raises(micro):
    with pytest.raises(PluginError, match="image tensor"):
        micro(torch.zeros(1, 1, 32, 32))
    with pytest.raises(PluginError, match="variant"):
        T.TransNeXt("huge")
    with pytest.raises(PluginError, match="pretrain_size"):
        T.TransNeXt("micro", pretrain_size=32)


@pytest.mark.parametrize("variant", list(PAPER_PARAMS_M))
def test_param_counts_with_classifier(variant):
    with torch.device("meta"):
        m = T.TransNeXt(variant, num_classes=1000)
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 2) == PAPER_PARAMS_M[variant]
    assert not list(m.buffers())  # everything size-dependent is recomputed and cached, nothing is a fixed buffer


def test_classifier_head():
    m = T.TransNeXt("micro", num_classes=10).eval()
    with torch.no_grad():
        logits = m.forward_head(m(torch.randn(2, 3, 64, 64)))
    assert logits.shape == (2, 10)
    with pytest.raises(PluginError, match="num_classes"):
        T.TransNeXt("micro").forward_head([torch.zeros(1, 384, 2, 2)])


def test_stochastic_depth_rates():
    m = T.TransNeXt("micro", drop_path_rate=0.2)
    rates = [b.drop_path.p for i in range(1, 5) for b in getattr(m, f"block{i}") if hasattr(b.drop_path, "p")]
    assert len(rates) == 20 and rates[-1] == pytest.approx(0.2)  # first block has rate 0 -> Identity
    x = torch.randn(2, 3, 32, 32)
    m.train()
    torch.manual_seed(0)
    a = m(x)[3]
    torch.manual_seed(1)
    b = m(x)[3]
    assert not torch.allclose(a, b)  # random residual drops in training
    m.eval()
    assert torch.equal(m(x)[3], m(x)[3])


# ----------------------------------------------------------------------------------------------------------- checkpoints


def test_official_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = _perturb(T.TransNeXt("micro", num_classes=1000)).eval()
    sd = dict(src.state_dict())
    assert any(k.startswith("head.") for k in sd)
    # official names (spot checks of the layout of classification/transnext.py)
    for k, shape in {
        "patch_embed1.proj.weight": (48, 3, 7, 7),
        "block1.0.attn.learnable_tokens": (2, 24, 9),
        "block1.0.attn.relative_pos_bias_local": (2, 9),
        "block1.0.attn.cpb_fc1.weight": (512, 2),
        "block1.0.attn.sr.weight": (48, 48, 1, 1),
        "block1.0.mlp.dwconv.dwconv.weight": (256, 1, 3, 3),
        "block4.1.attn.qkv.weight": (1152, 384),
        "block4.1.attn.query_embedding": (16, 1, 24),
        "norm4.weight": (384,),
        "head.weight": (1000, 384),
    }.items():
        assert tuple(sd[k].shape) == shape, k
    # buffers some re-saved official checkpoints carry: dropped by the filter (recomputed per input size)
    sd["relative_pos_index1"] = torch.zeros(10, dtype=torch.long)
    sd["relative_coords_table1"] = torch.zeros(5, 2)
    sd["block1.0.attn.seq_length_scale"] = torch.zeros(3136, 1)
    sd["block1.0.attn.padding_mask"] = torch.zeros(3136, 9, dtype=torch.bool)
    path = tmp_path / "transnext_micro_224_1k.pth"
    torch.save({"model": sd}, path)

    m = create_backbone("transnext_micro", weights=path).eval()
    assert not hasattr(m, "head")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(src(x), m(x)):
            assert torch.equal(a, b)
    filtered = T.checkpoint_filter_fn(sd, m)
    assert not any(k.startswith("head.") or "relative_" in k.split(".")[0] for k in filtered)
    assert set(filtered) == set(m.state_dict())
    # mmdet-style checkpoints: "backbone." prefix stripped, neck/head dropped
    mm = {"backbone." + k: v for k, v in m.state_dict().items()} | {"neck.0.weight": torch.zeros(1)}
    assert set(T.checkpoint_filter_fn(mm, m)) == set(m.state_dict())


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone("transnext_micro", weights=tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        create_backbone("transnext_micro", weights=text)
    with torch.device("meta"):
        tiny_keys = {k: tuple(v.shape) for k, v in T.TransNeXt("tiny").state_dict().items()}
    other = tmp_path / "tiny.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in tiny_keys.items() if k.startswith("block1.")}}, other)
    with pytest.raises(CheckpointError, match="shape"):
        create_backbone("transnext_micro", weights=other)


# -------------------------------------------------------------------------------------------------- oracle and caches


def test_optimised_equals_naive_backbone():
    torch.manual_seed(0)
    m = T.TransNeXt("micro").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(m(x), naive.backbone(m, x)):
            assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("chunk", ["default", "small"])
@pytest.mark.parametrize("stage,hw", [(1, (16, 24)), (1, (13, 7)), (2, (5, 9)), (3, (4, 6)), (4, (2, 3)), (4, (3, 5))])
def test_optimised_equals_naive_blocks(stage, hw, chunk, monkeypatch):
    if chunk == "small":  # one map row per chunk (attention and ConvGLU)
        monkeypatch.setattr(T, "_CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(T, "_CHUNK_ELEMENTS_MLP", 1)
    torch.manual_seed(stage)
    m = _perturb(T.TransNeXt("micro"), seed=stage).eval()
    blk = getattr(m, f"block{stage}")[0]
    x = torch.randn(2, hw[0] * hw[1], m.channels[stage - 1])
    with torch.no_grad():
        assert (blk(x, *hw) - naive.block(blk, x, *hw)).abs().max() < 1e-5


@pytest.mark.parametrize("size,pool", [((16, 24), (2, 3)), ((40, 40), (20, 20)), ((13, 7), (1, 1)), ((6, 4), (6, 4))])
def test_strided_bias_equals_gathered_bias(size, pool):
    """The gather-free view (keys reversed) holds exactly the gathered bias for uniform pooling."""
    m = _perturb(T.AggregatedAttention(32, 2, sr_ratio=2, pretrain_size=7))
    with torch.no_grad():
        table, ih, iw = T._bias_table(m, size, pool, torch.device("cpu"))
        gathered = T.gather_bias(table, ih, iw, 0, size[0]).view(2, *size, *pool)
        view = T.strided_bias(table, size, pool)
    assert torch.equal(view, gathered.flip(-2, -1))


def test_strided_bias_only_for_uniform_pooling():
    table = torch.zeros(2, 20, 20)
    assert T.strided_bias(table, (13, 7), (6, 3)) is None  # 13 rows do not split evenly into 6 pooling windows


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 40.0])
def test_shared_softmax_paths_against_oracle(temperature, grad, monkeypatch):
    """CPU inference takes the fused-kernel softmax, autograd the explicit one; both stay exact for similarities that
    would overflow an unshifted exp (a trained-up temperature)."""
    torch.manual_seed(0)
    blk = _perturb(T.TransNeXt("micro"), seed=3).eval().block1[0]
    with torch.no_grad():
        blk.attn.temperature.fill_(temperature)  # softplus(40) * log(9 + 4) ~ 100: exp(100) overflows float32
    calls = {"fused": 0, "explicit": 0}
    for name, path in (("fused", "_sink_softmax"), ("explicit", "_shared_softmax")):
        fn = getattr(T, path)
        monkeypatch.setattr(T, path, lambda *a, _fn=fn, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _fn(*a))
    x = torch.randn(2, 12 * 20, blk.norm1.normalized_shape[0]) * 3
    with torch.set_grad_enabled(grad):
        out = blk(x, 12, 20)
    with torch.no_grad():
        ref = naive.block(blk, x, 12, 20)
    assert calls == {"fused": 0, "explicit": 1} if grad else {"fused": 1, "explicit": 0}
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def test_sink_softmax_equals_one_softmax():
    """The sink trick: the fused kernel's softmax over pooled keys + one sink equals softmax over local + pooled."""
    g = torch.Generator().manual_seed(0)
    B, h, n, P, d, L = 2, 3, 10, 7, 5, 9
    q, k, v = (
        torch.randn(B, h, n, d, generator=g),
        torch.randn(B, h, P, d, generator=g),
        torch.randn(B, h, P, d, generator=g),
    )
    local, bias = torch.randn(B, h, n, L, generator=g) * 4, torch.randn(h, n, P, generator=g)
    local[:, :, :3, :4] = float("-inf")  # window positions outside the map
    mask = torch.zeros(h, n, P + 1)
    mask[..., :P] = bias
    with torch.no_grad():
        x_pool, w_local = T._sink_softmax(q, *T._sink_keys(k, v, torch.float32), local, mask)
    w = torch.cat([local, q @ k.transpose(-2, -1) + bias], -1).softmax(-1)
    assert (x_pool - w[..., L:] @ v).abs().max() < 1e-5
    assert (w_local - w[..., :L]).abs().max() < 1e-6


@pytest.mark.parametrize("chunk", ["default", "small"])
def test_fused_kernel_with_autograd_equals_naive(chunk, monkeypatch):
    """The GPU path (fused attention kernel also in training, one fresh mask per chunk) run on the CPU: values and
    gradients of the backbone's aggregated and full attention equal the naive oracle's."""
    if chunk == "small":
        monkeypatch.setattr(T, "_CHUNK_ELEMENTS", 1)
    calls = []
    monkeypatch.setattr(T, "_fused_kernel", lambda x, dropout, table: calls.append(1) or not dropout)
    torch.manual_seed(0)
    model = _perturb(T.TransNeXt("micro"), seed=5).train()
    for blk in (model.block1[0], model.block4[0]):
        x = torch.randn(2, 8 * 12, blk.norm1.normalized_shape[0])
        size = (8, 12)
        params = list(blk.parameters())
        y1 = blk(x, *size)
        g1 = torch.autograd.grad(y1.square().sum(), params)
        y2 = naive.block(blk, x, *size)
        g2 = torch.autograd.grad(y2.square().sum(), params)
        assert (y1 - y2).abs().max() < 1e-5
        scale = max(b.abs().max().item() for b in g2)  # float noise of near-zero gradients is relative to this
        for a, b in zip(g1, g2):
            assert (a - b).abs().max() <= 1e-5 * max(1.0, scale)
    assert calls


@pytest.mark.parametrize("chunk", ["default", "small"])
@pytest.mark.parametrize("kwargs", [{"num_heads": 2}, {"num_heads": 4, "pool_size": None, "sr_ratio": 4}])
def test_neck_block_equals_naive_with_gradients(kwargs, chunk, monkeypatch):
    if chunk == "small":
        monkeypatch.setattr(T, "_CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    blk = _perturb(T.TransNeXtBlock(64, **kwargs)).train()
    x = torch.randn(2, 64, 13, 19)
    params = list(blk.parameters())
    y1 = blk(x)
    g1 = torch.autograd.grad(y1.square().sum(), params)
    y2 = naive.neck_block(blk, x)
    g2 = torch.autograd.grad(y2.square().sum(), params)
    assert (y1 - y2).abs().max() < 1e-5
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


def test_geometry_cached_not_rebuilt(micro):
    T.clear_caches()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        micro(x)
        c1, l1 = T.cpb_geometry.cache_info(), T.local_geometry.cache_info()
        assert c1.misses == 4 and l1.misses == 3  # one per stage (stage 4 has no window)
        micro(x)
        c2, l2 = T.cpb_geometry.cache_info(), T.local_geometry.cache_info()
        assert (c2.misses, l2.misses) == (c1.misses, l1.misses) and c2.hits > c1.hits
        micro(torch.randn(1, 3, 64, 64))
        assert T.cpb_geometry.cache_info().misses == 8


def test_axis_table_matches_unique():
    """The per-axis distinct coordinates (found without torch.unique) index exactly the official per-pair values."""
    for n, p, ref in [(50, 6, 55), (13, 6, 13), (7, 7, 6), (160, 20, 55), (3, 1, 27)]:
        coords, index = T._axis_table(n, p, ref)
        q = torch.arange(n, dtype=torch.float32)
        k = torch.nn.functional.adaptive_avg_pool1d(q[None], p)[0]
        r = (q[:, None] - k[None]) / (ref - 1) * 8
        expect = torch.sign(r) * torch.log2(r.abs() + 1) / torch.log2(torch.tensor(8.0))
        assert torch.equal(coords[index], expect)
        assert len(coords) == len(torch.unique(expect))


def test_inference_bias_cache_invalidated_by_weight_updates():
    torch.manual_seed(0)
    m = T.TransNeXt("micro").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        m(x)
        attn = m.block1[0].attn
        assert attn._bias_cache.value is not None  # filled in eval/no-grad
        with torch.no_grad():
            attn.cpb_fc2.bias.add_(1.0)  # in-place update, like an optimizer or EMA step
        fresh = copy.deepcopy(m)
        assert fresh.block1[0].attn._bias_cache.value is None  # caches are never copied/pickled with the model
        assert torch.equal(m(x)[0], fresh(x)[0])
    m.train()
    m(x)  # training never reads or writes the cache
    assert m.block1[0].attn._bias_cache.key is not None


# ------------------------------------------------------------------------------------------- dtypes, devices, export


def test_bf16_autocast(micro):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = micro(x)
    with torch.no_grad():
        ref = micro(x)
    for a, b in zip(out, ref):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a.float()).all()
        assert (a.float() - b).abs().mean() < 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_model_runs_in_its_dtype(micro, dtype):
    """``model.half()`` / ``.to(bfloat16)`` (Ultralytics' half-precision validation and predict), also after an fp32
    run filled the size caches: every feature comes out in the model's dtype, close to fp32."""
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = micro(x)
        out = copy.deepcopy(micro).to(dtype)(x.to(dtype))
    for a, b in zip(out, ref):
        assert a.dtype == dtype
        assert (a.float() - b).abs().max() < 0.05 * b.abs().max()


def test_no_fixed_device_and_dtype():
    m = T.TransNeXt("micro").eval()
    with torch.no_grad():
        out = copy.deepcopy(m).to("meta")(torch.empty(1, 3, 64, 96, device="meta"))
        assert [f.device.type for f in out] == ["meta"] * 4
        out = m.to(torch.float64)(torch.randn(1, 3, 32, 32, dtype=torch.float64))
        assert all(f.dtype == torch.float64 for f in out)


# ----------------------------------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("hw", [(20, 28), (5, 3), (1, 1), (9, 16)])
def test_transnext_block_any_size(hw):
    blk = T.TransNeXtBlock(64).eval()
    assert blk.attn.num_heads == 2
    x = torch.randn(2, 64, *hw)
    assert blk(x).shape == x.shape
    blk2 = T.TransNeXtBlock(48, num_heads=3, pool_size=None, sr_ratio=4).train()
    y = blk2(torch.randn(1, 48, *hw))
    y.mean().backward()
    assert y.shape == (1, 48, *hw)


def test_block_argument_errors():
    with pytest.raises(PluginError, match="divisible"):
        T.TransNeXtBlock(64, num_heads=3)
    with pytest.raises(PluginError, match="sr_ratio"):
        T.TransNeXtBlock(64, pool_size=None, sr_ratio=1)


def test_convglu_and_csp_blocks():
    x = torch.randn(2, 32, 10, 14)
    g = T.ConvGLU(32)
    assert g(x).shape == x.shape
    bare = T.ConvGLU(32, residual=False)
    assert isinstance(bare.norm, torch.nn.Identity)
    assert torch.allclose(bare(x), bare.mlp(x.flatten(2).transpose(1, 2), 10, 14).transpose(1, 2).reshape(x.shape))
    c = T.C2fTransNeXt(32, 64, n=2)
    assert c(x).shape == (2, 64, 10, 14) and len(c.m) == 2 and isinstance(c.m[0], T.TransNeXtBlock)
    assert get_entry("TransNeXtBlock").rule == "same"
    assert get_entry("ConvGLU").rule == "same"
    assert get_entry("C2fTransNeXt").rule == "scaled" and get_entry("C2fTransNeXt").repeat


# ------------------------------------------------------------------------------------------------------------ YAMLs


def _yaml_model(name: str, scale: str = "n"):
    from ultralytics.nn.tasks import DetectionModel

    from yolo_plugins.integration.compat import load_yaml

    cfg = load_yaml(ROOT / "model_yamls" / f"{name}-transnext.yaml")
    cfg["scale"] = scale
    return DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize("name", ["yolov8", "yolov5", "yolo11"])
def test_yaml_builds_and_runs(name):
    model = _yaml_model(name).eval()
    assert isinstance(model.model[0], T.TransNeXt) and model.model[0].variant == "micro"
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 96, 160))
    assert y[0].shape[0] == 1 and y[0].shape[1] == 84


@pytest.mark.slow
def test_yaml_full_size_and_train_step():
    from ultralytics import YOLO

    model = YOLO(str(ROOT / "model_yamls" / "yolov8-transnext.yaml")).model.eval()
    with torch.no_grad():
        for hw in [(640, 640), (480, 640)]:
            preds = model(torch.zeros(1, 3, *hw))[0]
            assert preds.shape == (1, 84, sum((hw[0] // s) * (hw[1] // s) for s in (8, 16, 32)))
    detection_train_step(model)
    assert model.model[0].patch_embed1.proj.weight.grad is not None


def test_traced_sizes_are_python_ints(monkeypatch):
    """While tracing (ONNX export), map sizes reach the geometry tables as ints: traced tensor sizes defeated the
    de-duplication of relative coordinates (bias tables of every pair: the 640 px export exceeded ONNX's 2 GB)."""
    seen = []
    rows = T._axis_rows
    monkeypatch.setattr(T, "_axis_rows", lambda n, p: seen.append((n, p)) or rows(n, p))
    blk = T.TransNeXtBlock(64, num_heads=2).eval()
    x = torch.randn(1, 64, 12, 16)
    T.clear_caches()
    with torch.no_grad():
        traced = torch.jit.trace(blk, (x,), check_trace=False)
        assert seen and all(type(v) is int for pair in seen for v in pair)
        torch.testing.assert_close(traced(x), blk(x))


# ----------------------------------------------------- graph modes: export (tracing) and torch.compile, NCNN/OpenVINO


def _small_backbone(seed: int = 0) -> T.TransNeXt:
    """Micro with one block per stage: every code path (aggregated attention in stages 1-3, full in 4), fast to trace."""
    torch.manual_seed(seed)
    m = _perturb(T.TransNeXt("micro"), seed=seed).eval()
    for i in range(1, 5):
        setattr(m, f"block{i}", getattr(m, f"block{i}")[:1])
    return m


def _graph_mode(monkeypatch, mode: str) -> None:
    """Run the graph-mode code path eagerly (as torch.compile / the tracer would record it)."""
    monkeypatch.setattr(T, "_graph_mode", lambda: mode)


@pytest.mark.parametrize("n,p", [(16, 2), (13, 6), (7, 7), (20, 7), (3, 1), (40, 20), (9, 4)])
def test_axis_rows_address_every_pair(n, p):
    """The graph-mode table holds, for key j and query q, twice their relative coordinate at the contiguous slot
    (parity, start + q): what sliced_bias reads."""
    lo, step, size, rows = T._axis_rows(n, p)
    values = [lo + step * u for u in range(size)]
    bounds = T._pool_bounds(n, p)
    for j, (par, start) in enumerate(rows):
        for q in range(n):
            u = start + q if step == 2 else 2 * (start + q) + par
            assert values[u] == 2 * q - (bounds[j][0] + bounds[j][1] - 1)
    index = T._axis_index(n, p, torch.device("cpu"))
    assert index.tolist() == [[2 * (s + q) + par if step == 1 else s + q for par, s in rows] for q in range(n)]
    if n % p == 0:  # uniform pooling: exactly the distinct values (the eager table)
        assert size == len(T._axis_table(n, p, 14)[0])


@pytest.mark.parametrize(
    "size,pool", [((16, 24), (2, 3)), ((13, 7), (6, 3)), ((5, 9), (5, 9)), ((20, 28), (7, 7)), ((3, 5), (1, 1))]
)
def test_graph_bias_equals_eager_bias(size, pool, monkeypatch):
    """The bias gathered (ONNX, OpenVINO, compile) or sliced (NCNN) from the graph-mode table equals the eager bias
    (keys in (j, i) order), values and gradients (compiled, the table is computed in the graph, differentiable);
    traced, the table is a constant of the same values."""
    torch.manual_seed(0)
    m = _perturb(T.AggregatedAttention(32, 2, sr_ratio=2, pretrain_size=7)).train()
    params = [m.cpb_fc1.weight, m.cpb_fc1.bias, m.cpb_fc2.weight, m.cpb_fc2.bias]
    table, ih, iw = T._bias_table(m, size, pool, torch.device("cpu"))
    eager = T.gather_bias(table, ih, iw, 0, size[0]).unflatten(-1, pool).transpose(-1, -2).flatten(-2)  # keys (j, i)
    g = torch.randn(eager.shape)
    grads_eager = torch.autograd.grad((eager * g).sum(), params)

    x = torch.randn(1, size[0] * size[1], 32)
    _graph_mode(monkeypatch, "compile")
    for fn in (T.graph_bias, T.sliced_bias):
        graph = fn(T.graph_bias_table(m, size, pool, x), size, pool)
        assert graph.shape == (1, *eager.shape)
        assert (graph[0] - eager).abs().max() < 1e-5
        for a, b in zip(torch.autograd.grad((graph[0] * g).sum(), params), grads_eager):
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())
        with_sink = fn(T.graph_bias_table(m, size, pool, x), size, pool, sink=True)  # + pH zero columns
        assert with_sink.shape == (1, *eager.shape[:-1], eager.shape[-1] + pool[0])
        assert torch.equal(with_sink[..., : eager.shape[-1]], graph) and not with_sink[..., eager.shape[-1] :].any()
    _graph_mode(monkeypatch, "trace")
    traced = T.pooled_bias(m, size, pool, x)
    assert not traced.requires_grad and (traced[0] - eager).abs().max() < 1e-5


# blocks as in the micro backbone: (dim, heads, mlp ratio, sr ratio, pretrain map size)
_STAGES = {1: (48, 2, 8, 8, 56), 3: (192, 8, 4, 2, 14), 4: (384, 16, 4, 1, 7)}


@pytest.mark.parametrize("mode", ["trace", "compile"])
@pytest.mark.parametrize("stage,hw", [(1, (16, 24)), (1, (13, 7)), (3, (4, 6)), (4, (3, 5))])
def test_graph_forward_equals_naive(mode, stage, hw, monkeypatch):
    """The graph-mode forward (plain tensor operations, no chunks or caches) equals the naive oracle; compiled with
    gradients too."""
    dim, heads, mlp, sr, ref = _STAGES[stage]
    torch.manual_seed(stage)
    blk = _perturb(T.Block(dim, heads, 3, mlp, sr_ratio=sr, pretrain_size=ref), seed=stage)
    x = torch.randn(2, hw[0] * hw[1], dim)
    _graph_mode(monkeypatch, mode)
    with torch.no_grad():
        assert (blk.eval()(x, *hw) - naive.block(blk, x, *hw)).abs().max() < 1e-5
    if mode == "compile":
        params = list(blk.train().parameters())
        g1 = torch.autograd.grad(blk(x, *hw).square().sum(), params)
        g2 = torch.autograd.grad(naive.block(blk, x, *hw).square().sum(), params)
        for a, b in zip(g1, g2):
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


def test_graph_attention_dropout_branch_equals_sink(monkeypatch):
    """Graph modes with attention dropout take one softmax over the concatenated [pooled | local] similarities, without
    it the "sink" form; with a dropout rate too small to drop anything both give the same output and gradients."""
    dim, heads, _, sr, ref = _STAGES[1]
    torch.manual_seed(0)
    attn = _perturb(T.AggregatedAttention(dim, heads, sr_ratio=sr, pretrain_size=ref), seed=3).train()
    x, hw = torch.randn(2, 9 * 11, dim), (9, 11)
    _graph_mode(monkeypatch, "compile")
    params = list(attn.parameters())
    sink = attn(x, *hw)
    g_sink = torch.autograd.grad(sink.square().sum(), params)
    attn.attn_drop.p = 1e-12
    concat = attn(x, *hw)
    g_concat = torch.autograd.grad(concat.square().sum(), params)
    assert (sink - concat).abs().max() < 1e-5
    for a, b in zip(g_sink, g_concat):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


def test_graph_neck_block_equals_eager(monkeypatch):
    """Fixed pooled size (non-uniform pooling: both parities of the table) in a neck block."""
    blk = _perturb(T.TransNeXtBlock(64, num_heads=2)).eval()
    x = torch.randn(1, 64, 13, 19)
    with torch.no_grad():
        ref = blk(x)
        _graph_mode(monkeypatch, "trace")
        assert (blk(x) - ref).abs().max() < 1e-5


def test_trace_check_passes_with_cold_caches():
    """pnnx (NCNN export) traces with ``check_trace=True``: two traces must record the same graph. They differed when
    the first trace computed the size tables and the second read them from the cache, and with in-place GELU chosen
    by the autograd state. Frozen weights, as in Ultralytics' exporter."""
    m = _small_backbone()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 64, 96)
    T.clear_caches()
    traced = torch.jit.trace(m, (x,), check_trace=True)
    with torch.no_grad():
        for a, b in zip(traced(x), m(x)):
            assert (a - b).abs().max() < 1e-5


def _initializer_bytes(model) -> tuple[int, int]:
    """(total bytes of the ONNX initializers, elements of the largest one)."""
    import numpy as np
    import onnx

    sizes = [
        (int(np.prod(t.dims)), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
        for t in model.graph.initializer
    ]
    return sum(n * b for n, b in sizes), max(n for n, _ in sizes)


@pytest.mark.slow
def test_onnx_small_file_equal_outputs(tmp_path):
    """ONNX export (as Ultralytics calls it: TorchScript exporter, constant folding, then onnxslim) at a non-square size
    where the per-pair bias used to be stored as constants (+50 % of the weights here): the initializers stay at the
    size of the parameters, the largest constant is a weight, and ONNX Runtime computes the same features."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    onnxslim = pytest.importorskip("onnxslim")
    m = _small_backbone()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 256, 320)
    path = tmp_path / "transnext.onnx"
    torch.onnx.export(m, (x,), str(path), opset_version=18, input_names=["images"], dynamo=False)
    weights = sum(p.numel() for n, p in m.named_parameters() if "cpb_" not in n)  # the bias MLP: stored as tables
    largest_weight = max(p.numel() for p in m.parameters())
    for model in (onnx.load(path), onnxslim.slim(onnx.load(path))):
        total, largest = _initializer_bytes(model)
        assert total < 1.06 * 4 * weights, (total, 4 * weights)
        assert largest <= largest_weight
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = m(x)
    for a, b in zip(sess.run(None, {"images": x.numpy()}), ref):
        assert a.shape == tuple(b.shape)
        assert abs(a - b.numpy()).max() < 1e-4


def test_mnn_graph_has_no_reduce_l2(tmp_path):
    """Traced for MNN (the exporter hook hands the format to graph paths), the q/k norms are roots of squares: MNN
    3.6.1 reads ONNX's ReduceL2 from opset 18 on as a reduction over every axis. Other formats keep ReduceL2; both
    graphs compute the same features in ONNX Runtime."""
    from types import SimpleNamespace

    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from yolo_plugins.nn.layers import exporting_with

    m = _small_backbone()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = m(x)
    for fmt in ("mnn", "onnx"):
        path = tmp_path / f"{fmt}.onnx"
        with torch.no_grad(), exporting_with(SimpleNamespace(format=fmt, dynamic=False)):
            torch.onnx.export(m, (x,), str(path), opset_version=18, input_names=["images"], dynamo=False)
        ops = {n.op_type for n in onnx.load(path).graph.node}
        assert ("ReduceL2" in ops) == (fmt != "mnn"), sorted(ops)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for a, b in zip(sess.run(None, {"images": x.numpy()}), ref):
            assert abs(a - b.numpy()).max() < 1e-4


# operations ExecuTorch's XNNPACK partitioner does not delegate (each one ends a delegated partition; 105 partitions and
# a 50+ minute lowering of the full model at 640 before the graph path avoided them)
_UNDELEGATED = {
    "aten.sum.dim_IntList",
    "aten.layer_norm.default",
    "aten.split.Tensor",
    "aten.split_with_sizes.default",
    "aten.amax.default",
    "aten.unsqueeze.default",
    "aten.expand.default",
    "aten.linalg_vector_norm.default",
    "aten.softplus.default",
}
_BIAS_MLP = {"aten.log2.default", "aten.sign.default", "aten.arange.default", "aten.arange.start_step"}


@pytest.mark.parametrize("fmt, grad", [("executorch", True), ("executorch", False), ("litert", True)])
def test_torch_export_for_xnnpack_keeps_attention_delegable(fmt, grad):
    """``torch.export`` for ExecuTorch (and LiteRT) after the exporter's eager dry run: the bias tables, window bounds,
    query scales and indices are constants recorded in the dry run (no bias MLP, no geometry in the graph), and the
    attention, ConvGLU and LayerNorms use only operations XNNPACK delegates (means as global average pools, ``bmm``,
    slices) besides the two bias gathers and the adaptive pooling per block. Equal outputs to the eager model, in the
    dry run (which takes this graph path eagerly) and in the exported program; nothing is left on the modules. Without
    the export context ``torch.export`` keeps the generic graph path (sums, layer norms). LiteRT takes the same path
    but computes the bias tables in the program: its converter folds what is constant, and a constant table made it
    fold every block's gathered bias (yolov8n-transnext at 640: 131 MB instead of ~60)."""
    from types import SimpleNamespace

    from yolo_plugins.nn.layers import exporting_with

    m = _small_backbone().requires_grad_(False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = m(x)
    with torch.set_grad_enabled(grad), exporting_with(SimpleNamespace(format=fmt, dynamic=False)):
        dry = m(x)  # the exporter's dry run
        ep = torch.export.export(m, (x,))
    generic = torch.export.export(m, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    undelegated = _UNDELEGATED - ({"aten.unsqueeze.default"} if fmt == "litert" else set())  # (in the bias MLP)
    assert not ops & undelegated, sorted(ops & undelegated)
    assert bool(ops & _BIAS_MLP) == (fmt == "litert"), sorted(ops & _BIAS_MLP)
    assert {"aten.sum.dim_IntList", "aten.layer_norm.default"} <= {str(n.target) for n in generic.graph.nodes}
    with torch.no_grad():
        for a, b, c in zip(ep.module()(x), dry, ref):
            torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4)
    assert not [mod for mod in m.modules() if "_yolo_plugins_export_constants" in mod.__dict__]
    assert "_yolo_plugins_export_constants" not in T._axis_index.__dict__


@pytest.mark.compile
def test_compile_has_no_graph_breaks():
    """torch._dynamo.explain on the eval backbone and a neck block: no graph break, also after eager runs filled the
    caches (reading them used to break the graph: warnings filters, torch.equal on the weights)."""
    m, blk = _small_backbone(), _perturb(T.TransNeXtBlock(64, num_heads=2)).eval()
    for module, x in ((m, torch.randn(1, 3, 64, 96)), (blk, torch.randn(1, 64, 9, 13))):
        with torch.no_grad():
            module(x)
            torch._dynamo.reset()
            explained = torch._dynamo.explain(module)(x)
        assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
        assert explained.graph_count == 1


@pytest.mark.compile
@pytest.mark.parametrize("stage,hw", [(1, (16, 24)), (4, (2, 3))])
def test_compiled_block_equals_eager(stage, hw):
    """torch.compile (inductor) of an aggregated-attention block and a full-attention block: equal outputs. (Whole
    backbones take ~10 min to compile here; the graph is the same code.)"""
    dim, heads, mlp, sr, ref = _STAGES[stage]
    torch.manual_seed(stage)
    blk = _perturb(T.Block(dim, heads, 3, mlp, sr_ratio=sr, pretrain_size=ref), seed=stage).eval()
    x = torch.randn(1, hw[0] * hw[1], dim)
    torch._dynamo.reset()
    with torch.no_grad():
        assert (torch.compile(blk, dynamic=False)(x, *hw) - blk(x, *hw)).abs().max() < 1e-4


@pytest.mark.compile
def test_compiled_training_gradients_equal_eager():
    """A training step of the backbone through dynamo and AOTAutograd (backend aot_eager: the graph and its backward
    that inductor would compile): features and gradients equal eager ones."""
    m = _small_backbone().train()
    x = torch.randn(2, 3, 64, 96)
    params = list(m.parameters())
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", dynamic=False)
    y_eager, y_compiled = m(x), compiled(x)
    g_eager = torch.autograd.grad(sum(f.square().mean() for f in y_eager), params)
    g_compiled = torch.autograd.grad(sum(f.square().mean() for f in y_compiled), params)
    for a, b in zip(y_compiled, y_eager):
        assert (a - b).abs().max() < 1e-4
    for a, b in zip(g_compiled, g_eager):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


@pytest.mark.export
def test_openvino_small_file_equal_outputs(tmp_path):
    """OpenVINO converts the traced model (as Ultralytics does) and folds constants: its file stays at the size of the
    weights (it stored the per-pair bias and query_embedding x scale per position before) and computes the same."""
    ov = pytest.importorskip("openvino")
    m = _small_backbone()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 256, 320)
    traced = torch.jit.trace(m, (x,), strict=False, check_trace=False)
    ov.save_model(ov.convert_model(traced, input=[tuple(x.shape)], example_input=x), tmp_path / "m.xml", False)
    weights = sum(p.numel() for n, p in m.named_parameters() if "cpb_" not in n)
    assert (tmp_path / "m.bin").stat().st_size < 1.06 * 4 * weights
    # at f32: on a CPU with native bf16 (AMX) OpenVINO would otherwise run the f32 model in bf16
    got = ov.Core().compile_model(tmp_path / "m.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([x.numpy()])
    with torch.no_grad():
        for i, ref in enumerate(m(x)):
            assert abs(got[i] - ref.numpy()).max() < 1e-4


@pytest.mark.export
def test_ncnn_export_equal_outputs(tmp_path, monkeypatch):
    """pnnx (Ultralytics' NCNN path) traces with check_trace=True and converts every operation to an NCNN layer (no
    gather: the bias is sliced); NCNN computes the same features."""
    pnnx, ncnn = pytest.importorskip("pnnx"), pytest.importorskip("ncnn")
    import numpy as np

    monkeypatch.chdir(tmp_path)  # pnnx leaves debug files in the working directory
    m = _small_backbone()
    x = torch.randn(1, 3, 64, 96)
    names = {"pnnxparam": "m.pnnx.param", "pnnxbin": "m.pnnx.bin", "pnnxpy": "m_pnnx.py", "pnnxonnx": "m.pnnx.onnx"}
    names |= {"ncnnparam": "m.ncnn.param", "ncnnbin": "m.ncnn.bin", "ncnnpy": "m_ncnn.py"}  # as Ultralytics names them
    files = {k: str(tmp_path / v) for k, v in names.items()}
    pnnx.export(m, str(tmp_path / "m.pt"), inputs=x, fp16=False, **files)
    layers = {line.split()[0] for line in Path(files["ncnnparam"]).read_text().splitlines()[2:]}
    assert not any(name.startswith(("torch.", "Tensor.", "F.", "aten::")) for name in layers), layers
    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.load_param(files["ncnnparam"])
    net.load_model(files["ncnnbin"])
    ex = net.create_extractor()
    ex.input("in0", ncnn.Mat(x[0].numpy()).clone())
    with torch.no_grad():
        for i, ref in enumerate(m(x)):
            ret, out = ex.extract(f"out{i}")
            assert ret == 0 and abs(np.array(out) - ref[0].numpy()).max() < 1e-4
