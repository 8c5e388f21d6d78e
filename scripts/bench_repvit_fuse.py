"""CPU latency of a RepViT backbone before and after re-parameterisation (``fuse()``), in one run.

Example:
    python scripts/bench_repvit_fuse.py --variant m1_0 --imgsz 640 --threads 2
"""

from __future__ import annotations

import argparse

import torch

from yolo_plugins.nn.repvit import RepViT, benchmark_fuse


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="m1_0", choices=list(RepViT.variants))
    p.add_argument("--imgsz", type=int, nargs="+", default=[640], help="H W, or one size for both")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = benchmark_fuse(a.variant, a.imgsz[0] if len(a.imgsz) == 1 else a.imgsz[:2], a.batch, a.iters, a.warmup)
    print(
        f"RepViT {r['variant']} input {r['input']} threads {r['threads']} iters {r['iters']} (median):\n"
        f"  unfused {r['unfused_ms']:.1f} ms   fused {r['fused_ms']:.1f} ms   speedup x{r['speedup']:.2f}\n"
        f"  params {r['params'][0]:,} -> {r['params'][1]:,}   modules {r['modules'][0]} -> {r['modules'][1]}   "
        f"max |diff| {r['max_abs_diff']:.2e}"
    )
    return r


if __name__ == "__main__":
    main()
