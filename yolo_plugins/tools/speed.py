"""Latency and memory of plugin backbones and whole models, measured side by side (``scripts/speed_*.py``).

Every measured thing (a backbone or a whole Ultralytics model; inference or a training step; PyTorch eager or ONNX
Runtime; optionally the code of another checkout) lives in its own **worker process**, started once and kept alive.
The parent builds every worker, then runs ``rounds`` rounds in which each worker times one step in turn, so all of them
see the same machine conditions (the machines are noisy: ratios are only meaningful from one interleaved run). Latency
is the median over rounds. Memory is per worker: ``peak_rss_mb`` is the worker's ``ru_maxrss`` (Python, torch, weights
and activations) and ``step_mb`` the growth of the resident set's high-water mark during the timed steps over the
resident set before them (on Linux, via ``/proc/self/clear_refs``); on CUDA both are the allocator's peak and growth.

Steps:

* ``infer``: eval mode under ``torch.inference_mode()``; whole models fused first (``model.fuse()``, as Ultralytics
  predicts); ONNX: Ultralytics' exporter (opset and simplification as ``yolo export format=onnx``) then one
  ``onnxruntime`` CPU session run with ``threads`` intra-op threads; OpenVINO: Ultralytics' exporter
  (``yolo export format=openvino``, fp32) then one model compiled for the CPU with the ``LATENCY`` hint (as
  Ultralytics' backend), one stream, ``threads`` inference threads and fp32 inference precision (no bf16 where the CPU
  has it: the same arithmetic as ONNX Runtime); the worker reports the max |difference| to the eager output.
* ``train``: whole models compute Ultralytics' own loss on a generated batch (a few boxes per image), backward and an
  SGD step; backbones the mean of every feature. The model is in train mode (BatchNorm statistics update).

A worker imports ``yolo_plugins`` from ``root`` (default: the installed package), so a checkout of another commit
(``git worktree add``) can be measured against this one in the same run (see ``scripts/speed_models.py --against``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_BACKBONES",
    "DEFAULT_MODELS",
    "RUNTIMES",
    "Result",
    "Spec",
    "format_markdown",
    "machine_line",
    "measure",
    "report",
    "size_table",
    "stock_twin",
]

DEFAULT_BACKBONES = ("transnext_micro", "transxnet_t", "repvit_m0_9")
DEFAULT_MODELS = ("yolov8s.yaml", "yolov8s-transnext.yaml", "yolov8s-transxnet.yaml", "yolov8s-repvit.yaml")
RUNTIMES = ("torch", "onnx", "openvino")
RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}
ORACLE_MAX_SIZE = {"transnext": 320}  # its naive oracle materialises per-pair tables (~20 GB at 640)
_ROOT = Path(__file__).resolve().parents[2]  # the checkout (tests/oracles for --oracle)


@dataclass
class Spec:
    """What one worker measures.

    ``kind`` is ``backbone`` (a ``create_backbone`` name) or ``model`` (a model YAML, shipped or derived name);
    ``mode`` ``infer`` or ``train``; ``runtime`` ``torch``, ``onnx`` or ``openvino`` (the last two: inference of whole
    models on the CPU); ``root`` a checkout whose
    ``yolo_plugins`` the worker imports instead of the installed one; ``label`` names the row (default: ``name``).
    """

    name: str
    kind: str = "model"
    imgsz: int = 640
    batch: int = 1
    mode: str = "infer"
    runtime: str = "torch"
    device: str = "cpu"
    threads: int | None = None
    channels_last: bool = False
    oracle: bool = False
    root: str | None = None
    label: str = ""

    def __post_init__(self):
        if self.kind not in ("model", "backbone"):
            raise ValueError(f"kind must be 'model' or 'backbone', got {self.kind!r}")
        if self.mode not in ("infer", "train"):
            raise ValueError(f"mode must be 'infer' or 'train', got {self.mode!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.runtime != "torch" and (self.mode != "infer" or self.kind != "model"):
            raise ValueError(f"{RUNTIME_NAMES[self.runtime]} is measured for whole models in inference only")
        self.label = self.label or self.name


@dataclass
class Result:
    """One worker's measurements (ms, MiB); ``note`` explains a failure or skip."""

    spec: Spec
    latency_ms: float | None = None
    latency_min_ms: float | None = None
    peak_rss_mb: float | None = None
    step_mb: float | None = None
    params_m: float | None = None
    max_diff: float | None = None
    oracle_ms: float | None = None
    threads: int | None = None
    note: str = ""
    runs: list[float] = field(default_factory=list)


def stock_twin(name: str) -> str | None:
    """The stock model a derived plugin model replaces the backbone of: ``yolov8s-repvit.yaml`` -> ``yolov8s.yaml``."""
    from ..integration.names import split_derived

    try:
        parsed = split_derived(Path(name).name)
    except Exception:  # a malformed name has no twin
        return None
    return None if parsed is None else parsed[0]


# ---------------------------------------------------------------------------------------------------------- worker


def _rss_mb(field_name: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _detect_batch(model, batch: int, imgsz: int) -> dict:
    """A generated detection batch: ``batch`` images with three boxes each (classes below the model's ``nc``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = 3 * batch
    xy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
    nc = int(model.yaml.get("nc", 80))
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "batch_idx": torch.arange(batch).repeat_interleave(3).float(),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat([xy, wh], 1),
    }


def _build_step(spec: Spec, res: Result):
    """Build the measured object in this process; return ``step() -> output``, the model and its input."""
    import torch

    import yolo_plugins  # noqa: F401  (registers the modules; from spec.root when given)

    device = torch.device(spec.device)
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    if spec.kind == "backbone":
        from yolo_plugins import create_backbone  # public API: also in checkouts of other commits (--against)

        model = create_backbone(spec.name)
    else:
        from ultralytics import YOLO

        wrapper = YOLO(spec.name)
        model = wrapper.model
        if spec.runtime in ("onnx", "openvino"):
            _trained_looking(model)
    res.params_m = sum(p.numel() for p in model.parameters()) / 1e6
    model = model.to(device, memory_format=fmt)
    x = torch.randn(spec.batch, 3, spec.imgsz, spec.imgsz, device=device).contiguous(memory_format=fmt)

    if spec.mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        if spec.kind == "model":
            from ultralytics.cfg import get_cfg

            model.args = get_cfg()
            batch = {k: v.to(device) for k, v in _detect_batch(model, spec.batch, spec.imgsz).items()}
            batch["img"] = batch["img"].contiguous(memory_format=fmt)

            def loss():
                return model.loss(batch)[0].sum()
        else:

            def loss():
                return sum(f.float().mean() for f in model(x))

        def step():
            opt.zero_grad(set_to_none=True)
            value = loss()
            value.backward()
            opt.step()
            return value

        return step, model, x

    model.eval()
    if spec.kind == "model":
        model = model.fuse(verbose=False) if "verbose" in model.fuse.__code__.co_varnames else model.fuse()
    if spec.runtime == "onnx":
        return _onnx_step(spec, wrapper, model, x, res), model, x
    if spec.runtime == "openvino":
        return _openvino_step(spec, wrapper, model, x, res), model, x

    def step():
        with torch.inference_mode():
            return model(x)

    return step, model, x


def _trained_looking(model) -> None:
    """Trained-looking weights before an export (:func:`yolo_plugins.tools.trained.trained_looking`): converters
    fold constants, and freshly initialised zeros (TransXNet's position tables) would let them drop whole additions.
    Skipped for checkouts of other commits (``--against``) that lack the helper."""
    try:
        from yolo_plugins.tools.trained import trained_looking
    except ImportError:
        return
    trained_looking(model)  # runs under no_grad itself


def _first_tensor(out):
    import torch

    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def _onnx_step(spec: Spec, wrapper, model, x, res: Result):
    """Export with Ultralytics' exporter (into the worker's private folder); one onnxruntime CPU session."""
    import onnxruntime as ort
    import torch

    wrapper.model = model
    wrapper.ckpt = None
    file = Path(wrapper.export(format="onnx", imgsz=spec.imgsz, batch=spec.batch, device="cpu", verbose=False))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec.threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # idle threads must not busy-wait: the other workers' steps run in between
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    file.unlink()  # loaded; the folder is the worker's own
    feed = {session.get_inputs()[0].name: x.contiguous().numpy()}
    with torch.inference_mode():
        ref = _first_tensor(model.eval()(x.contiguous()))
    out = session.run(None, feed)[0]
    res.max_diff = float((torch.from_numpy(out) - ref).abs().max())

    def step():
        return session.run(None, feed)

    return step


def _openvino_step(spec: Spec, wrapper, model, x, res: Result):
    """Export with Ultralytics' exporter (fp32, into the worker's private folder); one model compiled for the CPU."""
    import openvino as ov
    import torch

    wrapper.model = model
    wrapper.ckpt = None
    folder = Path(wrapper.export(format="openvino", imgsz=spec.imgsz, batch=spec.batch, device="cpu", verbose=False))
    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": spec.threads or torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = core.compile_model(core.read_model(str(next(folder.glob("*.xml")))), "CPU", config)
    shutil.rmtree(folder)  # compiled; the folder is the worker's own
    request = compiled.create_infer_request()
    feed = x.contiguous().numpy()
    with torch.inference_mode():
        ref = _first_tensor(model.eval()(x.contiguous()))
    out = request.infer([feed])[compiled.output(0)]
    res.max_diff = float((torch.from_numpy(out) - ref).abs().max())

    def step():
        return request.infer([feed])

    return step


def _oracle_ms(spec: Spec, model_out, x, repeats: int, res: Result) -> None:
    """Time the family's naive oracle (``tests/oracles``, repository checkouts) and record its max |difference|."""
    import importlib.util

    import torch

    fam = spec.name.split("_")[0]
    path = _ROOT / "tests" / "oracles" / f"{fam}_naive.py"
    if not path.is_file() or spec.imgsz > ORACLE_MAX_SIZE.get(fam, 1 << 30) or spec.mode != "infer":
        res.note = f"no oracle run (families with tests/oracles, infer, sizes up to {ORACLE_MAX_SIZE})"
        return
    mod_spec = importlib.util.spec_from_file_location(f"_oracle_{fam}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    model, out = model_out
    model = model.eval()
    if hasattr(mod, "backbone"):
        naive = mod.backbone
    else:
        naive = lambda m, t: mod.naive_forward(m.state_dict(), m.config(m.variant), t)  # noqa: E731
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = naive(model, x)
            times.append(time.perf_counter() - t0)
    res.oracle_ms = statistics.median(times) * 1e3
    res.max_diff = max(float((a - b).abs().max()) for a, b in zip(out, ref))


def _worker(spec_json: str, warmup: int) -> None:
    """Worker loop: build, warm up, print ``ready``; one timed step per ``step`` line; ``quit`` prints the result."""
    spec = Spec(**json.loads(spec_json))
    if spec.root:
        sys.path.insert(0, spec.root)
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    res = Result(spec, threads=torch.get_num_threads())
    cuda = spec.device.startswith("cuda")
    try:
        step, model, x = _build_step(spec, res)
        out = None
        for _ in range(warmup):
            out = step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            base = _rss_mb()
            _reset_peak_rss()
    except Exception as e:  # reported as the row's note, the other workers go on
        res.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(json.dumps({"ready": False, "result": _result_dict(res)}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = step()
        if cuda:
            torch.cuda.synchronize()
        res.runs.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"ms": res.runs[-1]}), flush=True)
    if res.runs:
        res.latency_ms, res.latency_min_ms = statistics.median(res.runs), min(res.runs)
    if cuda:
        res.peak_rss_mb = torch.cuda.max_memory_allocated() / 2**20
        res.step_mb = res.peak_rss_mb - base
    else:
        res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        hwm = _rss_mb("VmHWM")
        res.step_mb = None if hwm is None or base is None else max(hwm - base, 0.0)
    if spec.oracle and spec.kind == "backbone" and out is not None:
        _oracle_ms(spec, (model, out), x, max(1, len(res.runs)), res)
    print(json.dumps({"result": _result_dict(res)}), flush=True)


def _result_dict(res: Result) -> dict:
    d = asdict(res)
    d["spec"] = asdict(res.spec)
    return d


# ---------------------------------------------------------------------------------------------------------- parent


class _Worker:
    """One worker process; it runs in a private temporary folder (exports land there), removed at the end."""

    def __init__(self, spec: Spec, warmup: int):
        self.spec = spec
        env = dict(os.environ)
        if spec.root:  # the other checkout's package, not the installed one
            env["PYTHONPATH"] = os.pathsep.join([spec.root, env.get("PYTHONPATH", "")])
        self.folder = tempfile.mkdtemp(prefix="yolo-plugins-speed-")
        self.stderr = open(Path(self.folder) / "stderr.txt", "w+")  # a file, so a chatty worker never blocks on a pipe
        # this file run by path, so a checkout without it (``root``) can still be measured
        run = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__speed_worker__')"
        cmd = [sys.executable, "-c", run, __file__, "--worker", json.dumps(asdict(spec)), str(warmup)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, cwd=self.folder
        )
        self.result: Result | None = None

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.proc.wait()
        self.stderr.seek(0)
        err = (self.stderr.read().strip().splitlines() or ["worker exited"])[-1][:200]
        return {"ready": False, "result": _result_dict(Result(self.spec, note=f"failed: {err}"))}

    def ready(self) -> bool:
        msg = self._read()
        if not msg.get("ready"):
            self.result = _result_from(msg["result"])
        return self.result is None

    def step(self) -> None:
        if self.result is None:
            self.proc.stdin.write("step\n")
            self.proc.stdin.flush()
            msg = self._read()
            if "ms" not in msg:
                self.result = _result_from(msg["result"])

    def finish(self) -> Result:
        if self.result is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.result = _result_from(self._read()["result"])
        self.proc.wait()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.result


def _result_from(d: dict) -> Result:
    d = dict(d)
    d["spec"] = Spec(**d["spec"])
    return Result(**d)


def measure(specs: list[Spec], rounds: int = 5, warmup: int = 1, log=None, settle: float = 0.3) -> list[Result]:
    """Start one worker per spec (one at a time, each warmed up), then time ``rounds`` interleaved rounds, ``settle``
    seconds of idle before each step.

    Returns the results in the order of ``specs``; a worker that fails has a ``note`` and no latency.
    """
    workers = []
    for s in specs:
        w = _Worker(s, warmup)
        w.ready()
        workers.append(w)
        if log:
            log(f"ready: {s.label} ({s.mode}, {s.runtime}, {s.imgsz} px, batch {s.batch})")
    for r in range(rounds):
        for w in workers:
            time.sleep(settle)  # the previous worker's OpenMP threads stop spinning before the next one starts
            w.step()
        if log:
            log(f"round {r + 1}/{rounds} done")
    return [w.finish() for w in workers]


# ---------------------------------------------------------------------------------------------------------- tables


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int | None = None) -> str:
    """Machine and software the figures come from."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    try:
        from ultralytics import __version__ as ul
    except ImportError:
        ul = "-"
    return (
        f"{cpu_name()}, {os.cpu_count()} CPUs{gpu}, {threads or torch.get_num_threads()} threads; torch "
        f"{torch.__version__}, ultralytics {ul}"
    )


def report(results: list[Result], threads: int | None, rounds: int, out: Path | None = None, extra: str = "") -> str:
    """The Markdown table of ``results`` under a line naming the machine and settings; printed, and written to
    ``out`` when given."""
    table = f"{machine_line(threads)}; median of {rounds} interleaved rounds{extra}\n\n" + format_markdown(results)
    print(table)
    if out:
        Path(out).write_text(table)
    return table


def _fmt(v, nd: int = 0) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _key(s: Spec) -> tuple:
    return (s.kind, s.mode, s.imgsz, s.batch, s.runtime, s.device)


def format_markdown(results: list[Result]) -> str:
    """One table. ``ratio``: a derived model's latency over its stock twin's (same mode, size, batch, runtime, device,
    default memory layout, this checkout). Notes give an ONNX Runtime or OpenVINO row's latency over the same model's
    eager one and a row from another checkout (``root``) its latency over this checkout's."""
    lines = [
        "| model | mode | runtime | imgsz | batch | latency ms | min ms | ratio to stock | params M | peak RSS MiB | "
        "step MiB | max diff | note |",
        "|" + "---|" * 13,
    ]
    rows = {(r.spec.name, _key(r.spec), r.spec.channels_last, r.spec.root): r for r in results}

    def latency(name, key, cl=False, root=None):
        r = rows.get((name, key, cl, root))
        return None if r is None else r.latency_ms

    for r in results:
        s, key, notes = r.spec, _key(r.spec), [r.note] if r.note else []
        twin = stock_twin(s.name) if s.kind == "model" else None
        ref = latency(twin, key) if twin else None
        ratio = f"{r.latency_ms / ref:.2f}x" if ref and r.latency_ms else "-"
        eager = latency(s.name, (*key[:4], "torch", key[5]), s.channels_last, s.root) if s.runtime != "torch" else None
        if eager and r.latency_ms:
            notes.append(f"{r.latency_ms / eager:.2f}x eager")
        cur = latency(s.name, key, s.channels_last) if s.root else None
        if cur and r.latency_ms:
            notes.append(f"{r.latency_ms / cur:.2f}x this checkout's time")
        if r.oracle_ms is not None:
            notes.append(f"naive oracle {r.oracle_ms:.0f} ms")
        label = s.label + (" (channels-last)" if s.channels_last and "channels" not in s.label else "")
        lines.append(
            f"| {label} | {s.mode} | {s.runtime} | {s.imgsz} | {s.batch} | {_fmt(r.latency_ms)} | "
            f"{_fmt(r.latency_min_ms)} | {ratio} | {_fmt(r.params_m, 1)} | {_fmt(r.peak_rss_mb)} | "
            f"{_fmt(r.step_mb)} | {'-' if r.max_diff is None else f'{r.max_diff:.1e}'} | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def size_table(names: list[str], imgsz: int = 640) -> str:
    """Markdown table of backbone-only parameters (M) and GFLOPs (torch's FlopCounterMode, 2 FLOPs per MAC, the
    convention of Ultralytics' GFLOPs) for one ``imgsz x imgsz`` image, in eval mode, before and after ``fuse()``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..nn.backbone import create_backbone
    from ..nn.layers import Fusable

    lines = [f"| backbone | params (M) | fused params (M) | GFLOPs @ {imgsz} |", "|---|---|---|---|"]
    for name in names:
        m = create_backbone(name).eval()
        params = sum(p.numel() for p in m.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.zeros(1, 3, imgsz, imgsz))
        for sub in reversed(list(m.modules())):
            if isinstance(sub, Fusable):
                sub.fuse()
        fused = sum(p.numel() for p in m.parameters())
        lines.append(f"| {name} | {params / 1e6:.2f} | {fused / 1e6:.2f} | {fc.get_total_flops() / 1e9:.1f} |")
    return "\n".join(lines)


if __name__ == "__speed_worker__":
    _worker(sys.argv[3], int(sys.argv[4]))
