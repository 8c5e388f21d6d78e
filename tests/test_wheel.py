"""Where users are: the built wheel, installed without dependencies into a fresh virtual environment (which shares
this interpreter's torch and Ultralytics), used from an empty folder by bare model names and by its console script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def _run(args, cwd, env, timeout=600):
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, f"{args}\nexit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(python, bin dir, environment) of a venv with only the wheel installed on top of the system packages."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", YOLO_OFFLINE="1", YOLO_PLUGINS_CACHE_DIR=str(tmp / "cache"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp / "dist")], tmp, env)
    (wheel,) = (tmp / "dist").glob("yolo_plugins-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    _run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp, env)
    empty = tmp / "empty"
    empty.mkdir()
    return wheel, bindir, env, empty


def test_wheel_contents(wheel_env):
    wheel = wheel_env[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {n.split("/")[-1] for n in names if n.startswith("yolo_plugins/cfg/models/") and n.endswith(".yaml")}
    assert yamls == {p.name for p in (ROOT / "yolo_plugins" / "cfg" / "models").glob("*.yaml")} and len(yamls) >= 15
    top_level = {"yolo_plugins_autoload.pth", "_yolo_plugins_autoload.py", "_yolo_plugins_importhook.py"}
    assert top_level | {"yolo_plugins/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)


def test_bare_names_from_an_empty_folder(wheel_env):
    """Plain Ultralytics in a fresh interpreter (the autoload hook registers the plugin): a shipped and a derived
    model by bare name, both from the installed wheel, not from this checkout."""
    _, bindir, env, empty = wheel_env
    out = _run(
        [
            str(bindir / "python"),
            "-c",
            textwrap.dedent(
                """
                import sys, torch
                from ultralytics import YOLO
                for name in ("yolo26n-repvit.yaml", "yolo11n-seg-transxnet.yaml", "yolov8n-cls-repvit.yaml"):
                    m = YOLO(name)
                    m.model.eval()
                    with torch.no_grad():
                        m.model(torch.rand(1, 3, 64, 64))
                    print("BUILT", name, m.task, type(m.model.model[0]).__name__)
                import yolo_plugins
                print("FROM", yolo_plugins.__file__)
                """
            ),
        ],
        empty,
        env,
    )
    assert "BUILT yolo26n-repvit.yaml detect RepViT" in out
    assert "BUILT yolo11n-seg-transxnet.yaml segment TransXNet" in out
    assert "BUILT yolov8n-cls-repvit.yaml classify RepViT" in out
    origin = out.split("FROM ")[1].split()[0]
    assert str(bindir.parent) in origin and str(ROOT) not in origin
    assert not any(empty.iterdir())  # nothing written into the user's folder


def test_console_script(wheel_env):
    _, bindir, env, empty = wheel_env
    exe = str(bindir / "yolo-plugins")
    out = _run([exe, "list"], empty, env)
    assert "RepViT" in out and "yolo26-repvit.yaml" in out and "<stock name>-<family>" in out
    out = _run([exe, "shapes", "yolov8n-pose-transnext.yaml", "--imgsz", "64"], empty, env)
    assert "nn.transnext.TransNeXt" in out and "Pose" in out
    out = _run([exe, "swap", "yolo11n-obb.yaml", "--backbone", "repvit:m1_1", "-o", "-"], empty, env)
    assert "[-1, 1, RepViT, [m1_1]]" in out and "OBB" in out
