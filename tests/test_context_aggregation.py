"""ContextAggregation: identity at initialisation, the seed's exact formula (naive oracle), any size, YAML use."""

from __future__ import annotations

import pytest
import torch
from conftest import YAMLS

from yolo_plugins import PluginError
from yolo_plugins.nn.context_aggregation import ContextAggregation


def naive_context_aggregation(ca: ContextAggregation, x: torch.Tensor) -> torch.Tensor:
    """The reference forward, literally: a, k (softmax over H*W), v, y = m(v @ k) * a, x + y."""
    n, c = x.size(0), ca.inter_channels
    a = ca.a(x).sigmoid()
    k = ca.k(x).view(n, 1, -1, 1).softmax(2)
    v = ca.v(x).view(n, 1, c, -1)
    y = torch.matmul(v, k).view(n, c, 1, 1)
    y = ca.m(y) * a
    return x + y


@pytest.mark.parametrize("shape", [(1, 16, 7, 5), (3, 16, 20, 32)])
def test_identity_at_init(shape):
    torch.manual_seed(0)
    ca = ContextAggregation(shape[1])
    x = torch.randn(shape)
    assert torch.equal(ca(x), x)
    assert torch.count_nonzero(ca.m.conv.weight) == 0 and torch.count_nonzero(ca.m.conv.bias) == 0
    assert torch.count_nonzero(ca.v.conv.weight) > 0 and torch.count_nonzero(ca.a.conv.bias) == 0


@pytest.mark.parametrize("reduction", [1, 4])
@pytest.mark.parametrize("shape", [(1, 32, 1, 1), (2, 32, 9, 13), (4, 32, 16, 16)])
def test_matches_reference_formula(reduction, shape):
    torch.manual_seed(1)
    ca = ContextAggregation(shape[1], reduction)
    for p in ca.parameters():  # give every conv (incl. zero-initialised m) non-trivial weights
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(shape)
    out = ca(x)
    torch.testing.assert_close(out, naive_context_aggregation(ca, x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, x)
    assert ca.v.conv.out_channels == max(shape[1] // reduction, 1)


def test_gradients_flow_and_state_dict_layout():
    ca = ContextAggregation(8, 2)
    assert sorted(ca.state_dict()) == sorted(f"{p}.conv.{w}" for p in ("a", "k", "v", "m") for w in ("weight", "bias"))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    ca(x).sum().backward()
    assert ca.m.conv.weight.grad is not None and ca.m.conv.weight.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(PluginError, match="positive ints"):
        ContextAggregation(16, 0)


@pytest.mark.parametrize("name", ["yolov8n-ca.yaml", "yolo11n-ca.yaml"])
def test_ca_yamls_build_and_run(name):
    from ultralytics.nn.tasks import DetectionModel

    from yolo_plugins.nn.context_aggregation import ContextAggregation as CA

    torch.manual_seed(0)
    m = DetectionModel(str(YAMLS / name), verbose=False).eval()
    cas = [mod for mod in m.modules() if isinstance(mod, CA)]
    assert len(cas) == 3
    assert [c.in_channels for c in cas] == [64, 128, 256]  # n scale: 256/512/1024 * 0.25
    stock = DetectionModel(name.replace("-ca", ""), verbose=False)
    extra = sum(p.numel() for c in cas for p in c.parameters())
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in stock.parameters()) + extra
    with torch.no_grad():
        for h, w in ((64, 64), (96, 64)):
            y = m(torch.rand(2, 3, h, w))[0]
            assert y.shape[:2] == (2, 84)
