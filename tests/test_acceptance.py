"""The GPU acceptance script's CPU dry run (scripts/gpu_acceptance.py --device cpu --dry-run), so that it cannot rot
before someone runs it on a GPU: every check that a CPU can run passes, the CUDA-only ones are skipped with their
reason, a failure is reported and makes the exit code non-zero."""

from __future__ import annotations

import pytest

from yolo_plugins.tools import acceptance

CPU_CHECKS = {"train-amp", "val-fp32", "half-compute", "onnx-half", "speed"}
CUDA_CHECKS = {"amp-float16-compute", "val-half", "predict-half", "tensorrt-half"}


def _lines(text: str) -> dict[tuple[str, str], str]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("PASS", "FAIL", "SKIP"):
            out[(parts[1], parts[2])] = parts[0]
    return out


def _dry_run(families: list[str], tmp_path, capsys) -> tuple[int, dict, str]:
    report = tmp_path / "report.md"
    code = acceptance.main(["--device", "cpu", "--dry-run", "--families", *families, "--out", str(report)])
    text = report.read_text()
    capsys.readouterr()
    return code, _lines(text), text


def test_dry_run_on_the_cpu(tmp_path, capsys):
    code, status, text = _dry_run(["ca"], tmp_path, capsys)
    assert code == 0, text
    assert {status[("ca", c)] for c in CPU_CHECKS} == {"PASS"}, text
    assert {status[("ca", c)] for c in CUDA_CHECKS} == {"SKIP"}, text
    assert status[("stock", "speed")] == "PASS" and "needs CUDA" in text
    assert "| yolov8n-ca |" in text and "| yolov8n (stock) |" in text and "0 failed" in text


@pytest.mark.precision
@pytest.mark.slow
def test_dry_run_every_family(tmp_path, capsys):
    code, status, text = _dry_run(list(acceptance.FAMILIES), tmp_path, capsys)
    assert code == 0, text
    for family in acceptance.FAMILIES:
        assert {status[(family, c)] for c in CPU_CHECKS} == {"PASS"}, text


def test_a_failed_check_fails_the_run(tmp_path, capsys, monkeypatch):
    """A check that raises is one FAIL line (the others go on: those needing its model are skipped) and exit code 1."""

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    monkeypatch.setattr(acceptance, "_train", broken)
    monkeypatch.setattr(acceptance, "_speed", lambda name, *a: {"model": name})
    code, status, text = _dry_run(["transnext"], tmp_path, capsys)
    assert code == 1
    assert status[("transnext", "train-amp")] == "FAIL" and "mat1 and mat2" in text
    assert status[("transnext", "val-fp32")] == "SKIP" and "training failed" in text


def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    if acceptance.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        acceptance.main(["--device", "0", "--dry-run"])
    assert e.value.code == 2 and "needs CUDA" in capsys.readouterr().err
