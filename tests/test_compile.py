"""``torch.compile`` (Ultralytics' ``compile=True``) for every family: no graph breaks inside plugin code, compiled
outputs equal to eager, and ``predict``/``val``/``train`` with ``compile=True`` through Ultralytics' own
``attempt_compile``. Slow (inductor compiles for minutes on a CPU): marker ``compile``, excluded from the default run.

Graph breaks are counted with ``torch._dynamo.explain`` (tests/compile_helpers.py) on the fused eval models at 64 px,
fresh ("cold") and after an eager run at the same size ("warm": inference caches filled, which is what a model that
predicted before being compiled meets), and on the blocks in eval and train mode. Only breaks whose user stack passes
through ``yolo_plugins`` count; Ultralytics' own (``make_anchors``' data-dependent ``torch.arange``, also in stock
models) do not. To keep Dynamo's tracing short, the backbones' long third stage is cut to two blocks (every code path
stays: the blocks of a stage are identical).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_helpers import graph_breaks, shorten_backbones

from yolo_plugins.tools.precision import CASES, build_case, perturb

pytestmark = pytest.mark.compile

FAMILIES = ["transnext", "transxnet", "repvit", "ca"]
# TransNeXt after an eager run: its inference bias cache is read while Dynamo traces, and the read
# (_BiasCache.get, warnings.catch_warnings around torch.equal) calls functions Dynamo skips: one break per attention
# module at each size (measured: 12 at 64 px for the cut yolov8n-transnext). The "transnext" helper removes it; flip to
# a plain case then.
KNOWN_BREAKS = {("transnext", "warm"): "12 graph breaks at 64 px: 'Attempted to call function marked as skipped'"}
# compiled vs eager: inductor reorders and fuses float32 arithmetic; measured max |diff| / max |eager| over the layers
# compared below: <= 3e-6 (the issue measured 2.5e-7 on the raw outputs)
COMPILE_TOL = 1e-4


def _model(family: str) -> torch.nn.Module:
    from yolo_plugins.tools.shapes import build_model

    torch.manual_seed(0)
    name = "yolov8n.yaml" if family == "stock" else f"yolov8n-{family}.yaml"
    return perturb(shorten_backbones(build_model(name))).eval().fuse(verbose=False)


def _plugin_breaks(model, x) -> list:
    return [b for b in graph_breaks(model, x) if b.in_plugin]


MODEL_CASES = [
    pytest.param(
        f,
        s,
        id=f"{f}-{s}",
        marks=pytest.mark.xfail(strict=True, reason=KNOWN_BREAKS[(f, s)]) if (f, s) in KNOWN_BREAKS else (),
    )
    for f in [*FAMILIES, "stock"]
    for s in ("cold", "warm")
]


@pytest.mark.parametrize("family,state", MODEL_CASES)
def test_no_graph_breaks_in_models(family, state):
    model = _model(family)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if state == "warm":
            model(x)
        breaks = _plugin_breaks(model, x)
    assert not breaks, f"{len(breaks)} graph breaks in plugin code:\n" + "\n".join(map(str, breaks))


BLOCKS = [n for n, c in CASES.items() if c.kind == "block"]


BLOCK_CASES = [
    pytest.param(
        name,
        mode,
        id=f"{name}-{mode}",
        # the same inference bias cache as the backbone's (KNOWN_BREAKS): 4 breaks per block measured at 12x20
        marks=pytest.mark.xfail(strict=True, reason="4 graph breaks: inference bias cache read (see KNOWN_BREAKS)")
        if CASES[name].family == "transnext" and mode == "eval" and name.split("[")[0] != "ConvGLU"
        else (),
    )
    for name in BLOCKS
    for mode in ("eval", "train")
]


@pytest.mark.parametrize("name,mode", BLOCK_CASES)
def test_no_graph_breaks_in_blocks(name, mode):
    case = CASES[name]
    torch.manual_seed(0)
    block = perturb(build_case(case)).train(mode == "train")
    x = torch.randn(case.shape, generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(mode == "train"):
        if mode == "eval":
            block(x)  # warm: inference caches filled
        breaks = _plugin_breaks(block, x)
    assert not breaks, f"{len(breaks)} graph breaks in plugin code:\n" + "\n".join(map(str, breaks))


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_equals_eager(family):
    """Ultralytics' ``attempt_compile`` (inductor) on the fused eval model: every output equals eager within
    COMPILE_TOL of its scale."""
    from ultralytics.utils.torch_utils import attempt_compile

    from yolo_plugins.tools.precision import relative_errors, tensors

    model = _model(family)
    compiled = attempt_compile(copy.deepcopy(model), device=torch.device("cpu"), mode=True)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = tensors(model(x)), tensors(compiled(x))
    err = max(relative_errors(out, ref))
    print(f"{family}: compiled vs eager {err:.1e}")
    assert err <= COMPILE_TOL, f"{family}: compiled differs from eager by {err:.1e} of the output scale"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_ultralytics_compile_true(family, tmp_path, monkeypatch):
    """``train``, ``val`` and ``predict`` with ``compile=True`` (Ultralytics 8.4 compiles in all three), one short
    epoch on generated data at 64 px: every step runs and gives finite losses, metrics and boxes."""
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data", DatasetSpec(n_train=4, n_val=2, imgsz=64))
    yolo = YOLO(f"yolov8n-{family}.yaml")
    shorten_backbones(yolo.model)
    yolo.train(
        data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, val=False,
        compile=True, project=str(tmp_path), name="c", verbose=False,
    )  # fmt: skip
    assert torch.isfinite(torch.as_tensor([float(v) for v in yolo.trainer.tloss.values()])).all()
    metrics = yolo.val(data=str(data), imgsz=64, batch=2, device="cpu", compile=True, plots=False, verbose=False)
    assert torch.isfinite(torch.as_tensor(list(metrics.results_dict.values()), dtype=torch.float64)).all()
    res = yolo.predict(str(Path(ASSETS) / "bus.jpg"), imgsz=64, device="cpu", compile=True, verbose=False)
    assert torch.isfinite(res[0].boxes.data).all()
