"""GPU acceptance run of every yolo-plugins family: AMP training, validation, half-precision predict/val/compute,
ONNX (and TensorRT) half-precision export, speed and peak memory; one PASS/FAIL/SKIP line per check, exit code 1 on any
failure. See docs/precision.md.

Usage: python scripts/gpu_acceptance.py [--device 0] [--families transnext ...] [--out report.md]
       python scripts/gpu_acceptance.py --device cpu --dry-run   # the same code at tiny sizes on a CPU
"""

from yolo_plugins.tools.acceptance import main

if __name__ == "__main__":
    raise SystemExit(main())
