"""Ultralytics' GPU precision paths, run on the CPU (no GPU in CI): the pieces a test monkeypatches so that the real
trainer, validator and predictor code of the installed release takes the branch it takes on a CUDA device.

* :func:`cpu_amp`: the trainer's automatic mixed precision. Ultralytics refuses autocast on the CPU (``check_amp``
  returns False there, its ``autocast`` helper raises for bfloat16 without CUDA, the ``GradScaler`` is built for
  "cuda" and disables itself without it). Here ``check_amp`` passes, the trainer's (and validator's) ``autocast``
  helper returns ``torch.autocast("cpu", dtype)`` and ``torch.amp.GradScaler`` is built for the CPU (PyTorch's CPU
  scaler: the same scale/unscale/inf-check/step/update logic).
* :func:`gpu_validation`: the validator's "not on the CPU" decision during training. Releases up to 8.3.x then cast
  the EMA model with ``model.half()`` and feed half-precision images (``args.half = device.type != "cpu" and amp``);
  8.4.x keeps float32 weights and runs half-precision images under autocast (``args.quantize = 16``). The trainer's
  device is replaced, during validation only, by :class:`GPULikeDevice`: the string "cpu" (which every tensor
  ``.to()`` accepts) whose ``type`` is neither "cpu" nor any accelerator's name.
* :func:`gpu_half_backend`: ``AutoBackend(fp16=True)`` for PyTorch models, which 8.4.190 drops on the CPU ("PyTorch
  CPU FP16 is slow") but honours on GPUs (``model.half()``, half-precision inputs); 8.3.100 and 8.4.100 honour it on
  the CPU too.
* :func:`gpu_exporter`: the exporter's ``half=True`` branch of GPUs (``model.half()`` traced), through the same
  device string.
"""

from __future__ import annotations

import functools

import torch


class _NotCPU(str):
    """A device type that is neither "cpu" (``==``, ``!=``, set membership) nor any accelerator's name, while being
    the string "cpu" to everything that only reads it (hash, printing)."""

    def __eq__(self, other):
        return False if other == "cpu" else str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = str.__hash__


class GPULikeDevice(str):
    """The CPU as a device string (every tensor ``.to()`` accepts it) whose ``type`` says "not the CPU" to
    ``device.type != "cpu"`` checks and matches no accelerator name (no CUDA synchronisation is attempted)."""

    type = _NotCPU("cpu")
    index = None


def cpu_amp(monkeypatch, dtype: torch.dtype = torch.float16) -> dict:
    """Point the trainer's AMP at the CPU (see the module doc). Returns counters of what ran: ``autocast`` (entered
    with AMP enabled) and ``scaler_steps`` (GradScaler.step calls), for the test to assert the paths were taken."""
    import ultralytics.engine.trainer as trainer_mod

    seen = {"autocast": 0, "scaler_steps": 0, "scales": []}

    def autocast(enabled, device: str = "cuda"):
        dt = enabled if isinstance(enabled, torch.dtype) else dtype
        if bool(enabled):
            seen["autocast"] += 1
        return torch.autocast("cpu", dtype=dt, enabled=bool(enabled))

    class CPUGradScaler(torch.amp.GradScaler):
        def __init__(self, device: str = "cuda", *args, **kwargs):
            super().__init__("cpu", *args, **kwargs)

        def step(self, optimizer, *args, **kwargs):
            seen["scaler_steps"] += 1
            seen["scales"].append(self.get_scale() if self.is_enabled() else None)
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "check_amp", lambda *a, **k: True)
    monkeypatch.setattr(trainer_mod, "autocast", autocast)
    monkeypatch.setattr(torch.amp, "GradScaler", CPUGradScaler)
    try:
        import ultralytics.engine.validator as validator_mod

        if hasattr(validator_mod, "autocast"):
            monkeypatch.setattr(validator_mod, "autocast", autocast)
    except ImportError:
        pass
    return seen


def gpu_validation(monkeypatch) -> dict:
    """Make the validator called by the trainer decide as on a GPU (see the module doc). Returns what it decided:
    ``half`` (8.3.x: the model was cast with ``model.half()``) or ``quantize`` (8.4.x), and the dtype of the
    model's parameters and of the images it validated on."""
    from ultralytics.engine.validator import BaseValidator

    seen: dict = {"calls": 0, "param_dtypes": set(), "image_dtypes": set()}
    original = BaseValidator.__call__

    @functools.wraps(original)
    def call(self, trainer=None, model=None):
        if trainer is None:
            return original(self, trainer, model)
        device = trainer.device
        trainer.device = GPULikeDevice(str(device))
        preprocess = self.preprocess

        def spy(batch):
            batch = preprocess(batch)
            seen["image_dtypes"].add(batch["img"].dtype)
            return batch

        self.preprocess = spy
        try:
            out = original(self, trainer, model)
        finally:
            trainer.device = device
            del self.preprocess
        seen["calls"] += 1
        seen["half"] = getattr(self.args, "half", None)
        seen["quantize"] = getattr(self.args, "quantize", None)
        return out

    monkeypatch.setattr(BaseValidator, "__call__", call)
    return seen


def gpu_half_backend(monkeypatch) -> dict:
    """``AutoBackend(fp16=True)`` honoured for PyTorch models on the CPU, as on a GPU (see the module doc)."""
    from ultralytics.nn.autobackend import AutoBackend

    seen = {"half_models": 0}
    original = AutoBackend.__init__

    @functools.wraps(original)
    def init(self, *args, fp16: bool = False, **kwargs):
        original(self, *args, fp16=fp16, **kwargs)
        backend = self.__dict__.get("backend")
        if fp16 and not self.fp16 and backend is not None and getattr(self, "format", "") == "pt":  # 8.4.190, CPU
            backend.fp16 = True
            backend.model.half()
        if fp16 and self.fp16:
            seen["half_models"] += 1

    monkeypatch.setattr(AutoBackend, "__init__", init)
    return seen


def gpu_exporter(monkeypatch) -> None:
    """Ultralytics' exporter on a :class:`GPULikeDevice`: it then takes its GPU branch for ``half=True`` (TorchScript
    and ONNX: ``model.half()`` and a half-precision input before tracing), which it refuses (TorchScript) or replaces
    by a float16 conversion of the float32 graph (ONNX, 8.4.x) on a CPU."""
    import ultralytics.engine.exporter as exporter_mod

    select = exporter_mod.select_device
    monkeypatch.setattr(exporter_mod, "select_device", lambda *a, **k: GPULikeDevice(str(select(*a, **k))))
