"""Per-module learning rates (`lr_scale`) in Ultralytics' optimizer: TransNeXt's parameters at a quarter of the rate,
a YAML row overriding it, stock models untouched, the scheduler scaling every group from its own initial rate."""

from __future__ import annotations

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.nn.tasks import DetectionModel

from yolo_plugins import YAMLError
from yolo_plugins.integration.optim import lr_scales, split_param_groups


def _optimizer(model):
    trainer = BaseTrainer.__new__(BaseTrainer)  # only build_optimizer is used: no dataset, no run folder
    trainer.args = get_cfg(overrides={"warmup_bias_lr": 0.1})
    return trainer.build_optimizer(model, name="AdamW", lr=0.002, momentum=0.9, decay=5e-4)


def _groups(opt):
    return {g["param_group"]: (g["lr"], len(g["params"])) for g in opt.param_groups}


def test_transnext_parameters_get_a_quarter_of_the_rate():
    from ultralytics import YOLO

    model = YOLO("yolov8n-transnext.yaml").model
    opt = _optimizer(model)
    backbone = {id(p) for p in model.model[0].parameters()}
    seen = set()
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert not ids & seen  # every parameter in exactly one group
        seen |= ids
        if ids & backbone:
            assert ids <= backbone and g["lr"] == pytest.approx(0.0005) and "*0.25" in g["param_group"]
        else:
            assert g["lr"] == pytest.approx(0.002)
    assert seen == {id(p) for p in model.parameters()}
    decay = {g["param_group"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["weight*0.25"] == decay["weight"] and decay["bias*0.25"] == decay["bias"] == 0.0


def test_scheduler_keeps_each_group_rate():
    from ultralytics import YOLO

    opt = _optimizer(YOLO("yolov8n-transnext.yaml").model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda e: 1 - e / 10)
    opt.step(), sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["initial_lr"] * 0.9)
    assert {round(g["initial_lr"], 6) for g in opt.param_groups} == {0.002, 0.0005}


def test_stock_and_scale_one_models_are_unchanged():
    from ultralytics import YOLO

    stock = _groups(_optimizer(YOLO("yolov8n.yaml").model))
    assert set(stock) == {"bias", "weight", "bn"} and all(lr == 0.002 for lr, _ in stock.values())
    assert lr_scales(YOLO("yolov8n-repvit.yaml").model) == {}


def test_a_yaml_row_overrides_the_scale():
    cfg = {
        "nc": 2,
        "backbone": [[-1, 1, "TransNeXt", ["micro", {"lr_scale": 1.0}]], [0, 1, "Feature", [3]]],
        "head": [[-1, 1, "ContextAggregation", [{"lr_scale": 0.5}]], [[2], 1, "Detect", ["nc"]]],
    }
    model = DetectionModel(cfg, verbose=False)
    assert model.model[0].lr_scale == 1.0 and model.model[2].lr_scale == 0.5
    groups = _groups(_optimizer(model))
    assert "weight*0.5" in groups and not any("0.25" in k for k in groups)
    cfg["backbone"][0][3] = ["micro", {"lr_scale": "fast"}]
    with pytest.raises(YAMLError, match="lr_scale must be a number"):
        DetectionModel(cfg, verbose=False)


def test_split_groups_is_general():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a, b], "param_group": "weight", "weight_decay": 0.1}, {"params": [c]}], lr=1.0)
    assert split_param_groups(opt, {id(b): 0.5, id(c): 0.1}) == 2
    assert [(g.get("param_group"), g["lr"], len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [
        ("weight", 1.0, 1, 0.1),
        ("weight*0.5", 0.5, 1, 0.1),
        ("group*0.1", 0.1, 1, 0),
    ]


@pytest.mark.slow
def test_registered_while_the_trainer_module_loads(tmp_path):
    """Importing a trainer first registers the plugin while `ultralytics.engine.trainer` is still loading (it imports
    nn.tasks): the optimizer hook then waits for the first trainer, which installs it before building its optimizer."""
    import os
    import subprocess
    import sys
    import textwrap

    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    data = make_dataset(tmp_path / "data", DatasetSpec(n_train=4, n_val=2, imgsz=64))
    code = f"""
        from ultralytics.engine.trainer import BaseTrainer  # nn.tasks loads inside: the plugin registers then
        import yolo_plugins
        print("AT_IMPORT", hasattr(BaseTrainer.build_optimizer, "yolo_plugins"), yolo_plugins.is_registered())
        from ultralytics.models.yolo.detect import DetectionTrainer
        t = DetectionTrainer(overrides=dict(model="yolov8n-transnext.yaml", data={str(data)!r}, imgsz=64,
                                            device="cpu", workers=0, plots=False, project={str(tmp_path)!r}))
        t.model = t.get_model(cfg="yolov8n-transnext.yaml", verbose=False)
        opt = t.build_optimizer(t.model, name="AdamW", lr=0.002)
        print("AFTER_TRAINER", sorted({{round(g["lr"], 6) for g in opt.param_groups}}))
        yolo_plugins.unregister()
        print("RESTORED", hasattr(BaseTrainer.build_optimizer, "yolo_plugins"))
    """
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "AT_IMPORT False True" in p.stdout  # registered, optimizer hook pending
    assert "AFTER_TRAINER [0.0005, 0.002]" in p.stdout and "RESTORED False" in p.stdout


@pytest.mark.compat
@pytest.mark.slow
def test_training_uses_the_scaled_groups(tmp_path, monkeypatch):
    """A real (one-epoch) training through Ultralytics' trainer: TransNeXt's parameters train at a quarter of the
    rate, the rest at the trainer's."""
    from ultralytics import YOLO

    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data", DatasetSpec(n_train=4, n_val=2, imgsz=64))
    model = YOLO("yolov8n-transnext.yaml")
    seen = {}
    model.add_callback(
        "on_train_epoch_start", lambda t: seen.setdefault("lr", {g["initial_lr"] for g in t.optimizer.param_groups})
    )
    model.train(
        data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, val=False,
        optimizer="AdamW", lr0=0.002, project=str(tmp_path), name="run", verbose=False,
    )  # fmt: skip
    assert {round(v, 6) for v in seen["lr"]} == {0.002, 0.0005}
