"""Fresh interpreters: the `yolo` console command, checkpoint reload with only `from ultralytics import YOLO`, the
`yolo-plugins` command, and the worker script Ultralytics generates for multi-GPU (DDP) training.

These need the package installed (``pip install -e .``), which installs the autoload hook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import ultralytics
from conftest import YAMLS, fresh_process_output, run_ddp_worker
from ultralytics.utils import ASSETS

ENV = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}


def run(code_or_args, cwd, env=None, timeout=300):
    args = [sys.executable, "-c", textwrap.dedent(code_or_args)] if isinstance(code_or_args, str) else code_or_args
    p = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture
def ca_yaml(tmp_path):
    dst = tmp_path / "yolov8n-ca.yaml"
    shutil.copy(YAMLS / "yolov8-ca.yaml", dst)
    return dst


@pytest.mark.compat
def test_plain_ultralytics_process_builds_plugin_yaml(ca_yaml, tmp_path):
    """Only `from ultralytics import YOLO`: a YAML path, a shipped and a derived model by bare name."""
    out = run(
        f"""
        import sys
        from ultralytics import YOLO
        m = YOLO({str(ca_yaml)!r})
        print("PLUGIN", type(m.model.model[16]).__module__, "yolo_plugins" in sys.modules)
        print("SHIPPED", type(YOLO("yolov8n-transxnet.yaml").model.model[0]).__name__)
        m = YOLO("yolo11n-pose-repvit.yaml")
        print("DERIVED", m.task, type(m.model.model[0]).__name__)
        """,
        tmp_path,
    )
    assert "PLUGIN yolo_plugins.nn.context_aggregation True" in out
    assert "SHIPPED TransXNet" in out and "DERIVED pose RepViT" in out


def test_autoload_can_be_disabled(ca_yaml, tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", f"from ultralytics import YOLO; YOLO({str(ca_yaml)!r})"],
        cwd=tmp_path,
        env={**ENV, "YOLO_PLUGINS_AUTOLOAD": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0 and "ContextAggregation" in p.stderr  # stock behaviour: the name is unknown


@pytest.mark.parametrize("model", ["yolov8n-ca.yaml", "yolo26n-seg-repvit.yaml"])
def test_yolo_console_command_predicts_with_plugin_yaml(model, tmp_path):
    """`yolo predict model=<bare name>` from an empty folder: a shipped and a derived model."""
    yolo = shutil.which("yolo", path=os.path.dirname(sys.executable)) or shutil.which("yolo")
    cmd = [yolo] if yolo else [sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()"]
    out = run(
        cmd + ["predict", f"model={model}", f"source={ASSETS / 'bus.jpg'}", "imgsz=64", "save=False", "device=cpu"],
        tmp_path,
    )
    assert "bus.jpg" in out and "Speed:" in out


def test_yolo_plugins_command(tmp_path):
    out = run(
        [sys.executable, "-m", "yolo_plugins", "shapes", str(YAMLS / "yolov8n-ca.yaml"), "--imgsz", "64"], tmp_path
    )
    assert "context_aggregation.ContextAggregation" in out and "(1, 64, 8, 8)" in out
    out = run([sys.executable, "-m", "yolo_plugins", "list"], tmp_path)
    assert "ContextAggregation" in out and "same" in out
    p = subprocess.run(
        [sys.executable, "-m", "yolo_plugins", "shapes", str(tmp_path / "nope.yaml")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "error" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.compat
def test_checkpoint_reloads_in_fresh_process(ca_yaml, tmp_path):
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(str(ca_yaml))
    for ca in model.model.model[16], model.model.model[20]:  # make CA non-identity so it matters
        torch.nn.init.normal_(ca.m.conv.weight, std=0.1)
    ckpt = tmp_path / "best.pt"
    model.save(ckpt)
    x = torch.rand(1, 3, 64, 96)
    ref = YOLO(str(ckpt)).model.float().eval()
    with torch.no_grad():
        expected = ref(x)[0]
    # autoload off: the checkpoint alone must bring the plugin in (unpickling imports yolo_plugins)
    got = fresh_process_output(
        ckpt, x, tmp_path, env={"YOLO_PLUGINS_AUTOLOAD": "0"}, check='assert "yolo_plugins" in sys.modules'
    )
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.compat
@pytest.mark.slow
def test_restricted_loading_allows_plugin_checkpoints(tmp_path):
    """ULTRALYTICS_SAFE_LOAD=1 (weights_only unpickling against an allow-list) loads plugin checkpoints while the
    plugin is registered, and refuses them again after unregister()."""
    from ultralytics import YOLO
    from ultralytics.nn import tasks

    if not hasattr(tasks, "_SafeLoad"):
        pytest.skip(f"ultralytics {ultralytics.__version__} has no restricted loading")

    torch.manual_seed(0)
    model = YOLO(str(YAMLS / "yolov8n-transnext.yaml"))  # backbone feature info and never-pickled caches inside
    ckpt = tmp_path / "best.pt"
    model.save(ckpt)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = YOLO(str(ckpt)).model.float().eval()(x)[0]
    env = {**ENV, "ULTRALYTICS_SAFE_LOAD": "1"}
    got = fresh_process_output(ckpt, x, tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"})
    # same weights; only the thread count differs from this process (GEMM summation order)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
    out = run(
        f"""
        import yolo_plugins
        from ultralytics import YOLO
        yolo_plugins.unregister()
        try:
            YOLO({str(ckpt)!r})
        except Exception as e:
            print("REFUSED", type(e).__name__)
        """,
        tmp_path,
        env=env,
    )
    assert "REFUSED" in out


@pytest.mark.slow
def test_ddp_worker_script_builds_plugin_model(ca_yaml, tmp_path):
    from yolo_plugins.tools.data import DatasetSpec, make_dataset

    data = make_dataset(tmp_path / "data", DatasetSpec(n_train=4, n_val=2, imgsz=64))
    out = run_ddp_worker(
        str(ca_yaml),
        str(data),
        """
        def train(self):  # stands in for the multi-GPU loop: what a worker has after start-up
            from ultralytics.nn.tasks import DetectionModel
            names = {type(m).__name__ for m in self.model.modules()}
            rebuilt = DetectionModel(self.args.model, nc=5, verbose=False)
            print("WORKER", "ContextAggregation" in names, type(rebuilt.model[16]).__name__)
        """,
        tmp_path,
    )
    assert "WORKER True ContextAggregation" in out
