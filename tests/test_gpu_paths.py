"""Every code path a GPU takes, run on the CPU against the naive oracles (values and gradients), in float32 and in
half precision (cast, and autocast as in AMP training).

TransNeXt decides by device in one place, ``transnext._on_cpu`` (docs/precision.md lists the branches): on a GPU the
shared softmax goes through PyTorch's fused attention kernel also with autograd (one fresh mask per chunk), chunks
are sized by ``_CHUNK_ELEMENTS_GPU``, the bias MLP runs in large slices and the Convolutional GLU runs whole, not in
row chunks. The tests patch ``_on_cpu`` to answer False, so the CPU runs exactly those paths, and check with spies
that they were taken. PyTorch itself picks another attention kernel on a GPU (flash, memory-efficient, cuDNN or
math, by dtype, head size and mask): the fused paths are also run with the math kernel forced. TransXNet, RepViT and
ContextAggregation make no device decision; their half-precision decisions (TransXNet: kernels merged with the
identity only in float32/float64 without autocast, BatchNorm folding off under autocast) are run here in every dtype
against the TransXNet oracle.

Tolerances: relative to the largest reference value (outputs) or the largest reference gradient (gradients), the
reference being the oracle in float64 on the same (rounded) weights and inputs; about 3x the worst error measured over
3 seeds (see TOL), the same on the GPU and CPU paths.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import yolo_plugins.nn.transnext as T
import yolo_plugins.nn.transxnet as X
from yolo_plugins.tools.precision import perturb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracles import transnext_naive as naive
from oracles import transxnet_naive as xnaive

# mode -> (parameter/input dtype, autocast dtype or None)
MODES = {
    "float32": (torch.float32, None),
    "float16": (torch.float16, None),
    "bfloat16": (torch.bfloat16, None),
    "autocast-float16": (torch.float32, torch.float16),
    "autocast-bfloat16": (torch.float32, torch.bfloat16),
}
# (values, gradients) tolerance per mode, relative to the largest reference value / gradient (see the module doc)
TOL = {  # measured worst of 3 seeds (TransNeXt stages 1/3/4 and TransXNet blocks, both layouts) in brackets
    "float32": (2e-6, 3e-6),  # (4.0e-7, 8.1e-7)
    "float16": (4e-3, 2e-2),  # (1.0e-3, 6.2e-3)
    "bfloat16": (3e-2, 7e-2),  # (9.6e-3, 2.1e-2)
    "autocast-float16": (3e-3, 6e-3),  # (9.8e-4, 2.0e-3)
    "autocast-bfloat16": (3e-2, 7e-2),  # (8.8e-3, 2.1e-2)
}


@pytest.fixture
def gpu(monkeypatch):
    """TransNeXt's device decisions answered as on a GPU; returns call counters of the branch markers."""
    seen = {"sink_softmax": 0, "shared_softmax": 0, "glu_rows": 0}
    monkeypatch.setattr(T, "_on_cpu", lambda device: False)
    _count(monkeypatch, seen)
    return seen


def _count(monkeypatch, seen: dict) -> None:
    for key, owner, name in (
        ("sink_softmax", T, "_sink_softmax"),
        ("shared_softmax", T, "_shared_softmax"),
        ("glu_rows", T.ConvolutionalGLU, "_forward_rows"),
    ):
        fn = getattr(owner, name)

        def spy(*a, _fn=fn, _k=key, **k):
            seen[_k] += 1
            return _fn(*a, **k)

        monkeypatch.setattr(owner, name, spy)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _run(module, x, fn, mode: str, grad: bool):
    """``fn(module, x)`` in ``mode`` with or without autograd: (output, parameter gradients or None)."""
    dtype, ac = MODES[mode]
    module, x = module.to(dtype), x.to(dtype)
    ctx = torch.autocast("cpu", dtype=ac) if ac else contextlib.nullcontext()
    if not grad:
        with torch.no_grad(), ctx:
            return fn(module, x), None
    params = [p for p in module.parameters() if p.requires_grad]
    with ctx:
        y = fn(module, x)
    grads = torch.autograd.grad(y.float().square().sum(), params, allow_unused=True)
    return y, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _compare(module, x, fast, oracle, mode: str, grad: bool, what: str) -> tuple[float, float]:
    """Run ``fast`` on ``module`` in ``mode`` and ``oracle`` in float64 on a float64 copy of the same (rounded)
    weights and input; assert output and gradients within TOL; return the two errors."""
    dtype, _ = MODES[mode]
    m = copy.deepcopy(module).to(dtype)
    xr = x.to(dtype)
    y, g = _run(m, xr, fast, mode, grad)
    exact = copy.deepcopy(m).double()
    y_ref, g_ref = _run(exact, xr.double(), oracle, "float32", grad)  # float64 module: no autocast, exact
    assert torch.isfinite(y.float()).all(), f"{what}: non-finite output in {mode}"
    err = _rel(y, y_ref)
    tol_y, tol_g = TOL[mode]
    assert err <= tol_y, f"{what} {mode} grad={grad}: output error {err:.2e} > {tol_y:.0e}"
    gerr = 0.0
    if grad:
        scale = max(r.abs().max().item() for r in g_ref)
        gerr = max(((a.double() - b).abs().max().item() for a, b in zip(g, g_ref)), default=0.0) / scale
        assert gerr <= tol_g, f"{what} {mode}: gradient error {gerr:.2e} > {tol_g:.0e}"
    return err, gerr


def _backbone(seed: int = 0) -> T.TransNeXt:
    torch.manual_seed(seed)
    return perturb(T.TransNeXt("micro"), seed=seed).eval()


def _tokens(blk, H: int, W: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, H * W, blk.norm1.normalized_shape[0], generator=g)


# ----------------------------------------------------------------------------------------------------------- TransNeXt


# the GPU's inference (.half(): float16 without autograd) and AMP training (autocast with autograd) paths by default;
# the remaining combinations with -m precision
DEFAULT = {
    ("float32", False),
    ("float32", True),
    ("float16", False),
    ("autocast-float16", True),
    ("autocast-bfloat16", True),
}
GRID = [
    pytest.param(mode, grad, id=f"{mode}-{'grad' if grad else 'infer'}", marks=() if (mode, grad) in DEFAULT else
                 pytest.mark.precision)
    for mode in MODES
    for grad in (False, True)
]  # fmt: skip


@pytest.fixture(scope="module")
def backbone() -> T.TransNeXt:
    return _backbone()


@pytest.mark.parametrize("mode,grad", GRID)
def test_transnext_blocks_against_oracle(gpu, backbone, mode, grad):
    """Backbone blocks of stage 1 (aggregated attention, pooled by sr 8), stage 3 (pooled by sr 2) and stage 4 (full
    attention) with their ConvGLU, in the GPU's paths and every dtype mode, against the naive oracle."""
    for stage, (H, W) in ((1, (16, 24)), (3, (5, 7)), (4, (3, 5))):
        blk = getattr(backbone, f"block{stage}")[0]
        _compare(
            blk,
            _tokens(blk, H, W, stage),
            lambda m, t, H=H, W=W: m(t, H, W),
            lambda m, t, H=H, W=W: naive.block(m, t, H, W),
            mode,
            grad,
            f"block{stage}",
        )
    # the fused kernel in every mode (also with autograd), the ConvGLU never in row chunks
    assert gpu["sink_softmax"] > 0 and gpu["shared_softmax"] == 0 and gpu["glu_rows"] == 0


def _some(modes: list[str], default: str) -> list:
    return [m if m == default else pytest.param(m, marks=pytest.mark.precision) for m in modes]


@pytest.mark.parametrize("chunk", ["one row", "gpu budget"])
@pytest.mark.parametrize("mode", _some(["float32", "float16", "autocast-bfloat16"], "float16"))
def test_transnext_gpu_chunks(gpu, mode, chunk, monkeypatch):
    """The GPU's chunking (``_CHUNK_ELEMENTS_GPU``: here every row at once) and the smallest chunks (one map row) on a
    neck block pooled by sr_ratio (non-uniform pooling: the gathered bias)."""
    if chunk == "one row":
        monkeypatch.setattr(T, "_CHUNK_ELEMENTS_GPU", 1)
    torch.manual_seed(0)
    blk = perturb(T.TransNeXtBlock(64, num_heads=4, pool_size=None, sr_ratio=4)).eval()
    x = torch.randn(2, 64, 13, 19, generator=torch.Generator().manual_seed(1))
    for grad in (False, True):
        _compare(blk, x, lambda m, t: m(t), naive.neck_block, mode, grad, f"neck block ({chunk})")
    assert gpu["sink_softmax"] > 0


@pytest.mark.parametrize("mode", _some(["float32", "float16", "autocast-float16"], "autocast-float16"))
def test_transnext_fused_kernel_with_math_backend(gpu, backbone, mode):
    """PyTorch may pick another attention kernel on a GPU (e.g. math for the sink's odd head size d + 1): the fused
    paths give the same with the math kernel forced."""
    for stage, (H, W) in ((1, (8, 12)), (4, (2, 3))):
        blk = getattr(backbone, f"block{stage}")[0]
        x = _tokens(blk, H, W)

        def fast(m, t, H=H, W=W):
            with sdpa_kernel([SDPBackend.MATH]):
                return m(t, H, W)

        for grad in (False, True):
            _compare(blk, x, fast, lambda m, t, H=H, W=W: naive.block(m, t, H, W), mode, grad, f"block{stage} math")


def test_on_cpu_is_the_only_device_decision():
    """Every device-type test in TransNeXt goes through ``_on_cpu`` (what the GPU tests patch)."""
    import inspect

    src = inspect.getsource(T)
    body = src.replace(inspect.getsource(T._on_cpu), "")
    assert 'device.type == "cpu"' not in body and 'device.type != "cpu"' not in body and "is_cuda" not in body


# ----------------------------------------------------------------------------------------------------------- TransXNet


def _xnet_block(seed: int = 0) -> X.TransXNetBlock:
    torch.manual_seed(seed)
    return perturb(X.TransXNetBlock(64, kernel_size=7, sr_ratio=2, num_groups=2, num_heads=2, pos_size=8)).eval()


def _xnaive(m, x):
    """The naive block with the module's parameters (kept as variables: gradients flow to them)."""
    sd = {f"b.{k}": v for k, v in m.state_dict(keep_vars=True).items()}
    return xnaive.naive_block(sd, "b", x, 2, 2, m.token_mixer.relative_pos_enc)


XNET_DEFAULT = {("float32", True), ("float16", False), ("autocast-float16", True)}
XNET_GRID = [
    pytest.param(mode, grad, layout, id=f"{mode}-{'grad' if grad else 'infer'}-{layout}",
                 marks=() if (mode, grad) in XNET_DEFAULT and layout == "nchw" else pytest.mark.precision)
    for mode in MODES
    for grad in (False, True)
    for layout in ("nchw", "channels_last")
]  # fmt: skip


@pytest.mark.parametrize("mode,grad,layout", XNET_GRID)
def test_transxnet_block_against_oracle(mode, grad, layout):
    """A TransXNet block (OSRA through the fused kernel, IDConv, MS-FFN and STE with their inference folds) in every
    dtype mode, on NCHW maps (YAML necks) and channels-last maps (the backbone), against the naive oracle."""
    blk = _xnet_block()
    x = torch.randn(2, 64, 12, 20, generator=torch.Generator().manual_seed(2))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _compare(blk, x, lambda m, t: m(t), _xnaive, mode, grad, f"TransXNetBlock {layout}")


@pytest.mark.parametrize("mode", _some(["float32", "float16", "autocast-float16"], "autocast-float16"))
def test_transxnet_osra_with_math_backend(mode):
    blk = _xnet_block(1)
    x = torch.randn(2, 64, 12, 20, generator=torch.Generator().manual_seed(3))

    def fast(m, t):
        with sdpa_kernel([SDPBackend.MATH]):
            return m(t)

    for grad in (False, True):
        _compare(blk, x, fast, _xnaive, mode, grad, "TransXNetBlock math")
