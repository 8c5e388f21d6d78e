"""Published checkpoints by name (`imagenet`, a tag, an official file name): found in the weights folder or downloaded
once from a loopback HTTP server standing in for the official host (complete, truncated, corrupt, 404, offline)."""

from __future__ import annotations

import http.server
import os
import threading
import time
from dataclasses import replace

import pytest
import torch
from conftest import fresh_process_output

from yolo_plugins import CheckpointError, create_backbone
from yolo_plugins.nn.repvit import RepViT
from yolo_plugins.weights import hub as W


class _Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; ``/truncated/...`` announces twice the bytes it sends."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                body = server.files.get(self.path.removeprefix("/truncated"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                cut = self.path.startswith("/truncated")
                self.send_header("Content-Length", str(len(body) * (2 if cut else 1)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def official(tmp_path):
    """An official-format RepViT m0_9 checkpoint (random weights, the released distilled classifier included)."""
    torch.manual_seed(0)
    model = RepViT("m0_9", num_classes=1000, distillation=True)
    path = tmp_path / "served.pth"
    torch.save({"model": model.state_dict()}, path)
    return path.read_bytes()


@pytest.fixture
def server(official):
    s = _Server({"/repvit_m0_9_distill_450e.pth": official, "/corrupt.pth": os.urandom(len(official))})
    yield s
    s.close()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    monkeypatch.setenv("YOLO_PLUGINS_WEIGHTS_DIR", str(d))
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    return d


def _serve(monkeypatch, server, path="/repvit_m0_9_distill_450e.pth"):
    """Point the published m0_9 checkpoint at the loopback server."""
    table = tuple(
        replace(c, url=server.url + path) if (c.family, c.variant, c.default) == ("repvit", "m0_9", True) else c
        for c in W.CHECKPOINTS
    )
    monkeypatch.setattr(W, "CHECKPOINTS", table)
    return next(c for c in table if c.family == "repvit" and c.variant == "m0_9" and c.default)


def test_table_has_every_variant_and_official_names():
    from yolo_plugins.nn.backbone import backbone_families

    for family, cls in backbone_families().items():
        for variant in cls.variants:
            c = W.find_checkpoint(family, variant, "imagenet")
            assert c is not None, f"{family}_{variant} has no imagenet checkpoint"
            assert c.url.startswith("https://") and c.url.split("?")[0].endswith(c.file)
    assert W.find_checkpoint("transnext", "micro", "imagenet").file == "transnext_micro_224_1k.pth"
    assert W.find_checkpoint("transxnet", "t", "imagenet").file == "transx-t.pth.tar"
    assert W.find_checkpoint("repvit", "m1_0", "imagenet").file == "repvit_m1_0_distill_450e.pth"


def test_download_once_then_load_by_name(server, folder, monkeypatch, official, tmp_path):
    c = _serve(monkeypatch, server)
    bb = create_backbone("repvit_m0_9", weights="imagenet")
    assert (folder / c.file).read_bytes() == official and server.requests == ["/repvit_m0_9_distill_450e.pth"]
    assert sorted(p.name for p in folder.iterdir()) == [c.file]  # no partial files left
    same = create_backbone("repvit_m0_9", weights=str(tmp_path / "served.pth"))  # by path: the same tensors
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), same.state_dict().values()))
    create_backbone("repvit_m0_9", weights=c.file)  # the official file name works too
    create_backbone("repvit_m0_9", weights="distill_450e")  # and the tag
    assert len(server.requests) == 1  # never downloaded again


def test_yaml_row_with_imagenet(server, folder, monkeypatch):
    from ultralytics.nn.tasks import DetectionModel

    _serve(monkeypatch, server)
    cfg = {
        "nc": 2,
        "backbone": [[-1, 1, "RepViT", ["m0_9", "imagenet"]], [0, 1, "Feature", [2]], [0, 1, "Feature", [3]]],
        "head": [[[1, 2], 1, "Detect", ["nc"]]],
    }
    m = DetectionModel(cfg, verbose=False)
    ref = RepViT("m0_9", weights="imagenet")
    assert torch.equal(m.model[0].features[0][0].c.weight, ref.features[0][0].c.weight)


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/truncated/repvit_m0_9_distill_450e.pth", "stopped after"),
        ("/corrupt.pth", "not a usable checkpoint"),
        ("/missing.pth", "HTTP 404"),
    ],
)
def test_download_faults_leave_nothing_behind(server, folder, monkeypatch, path, expected):
    c = _serve(monkeypatch, server, path)
    with pytest.raises(CheckpointError) as e:
        create_backbone("repvit_m0_9", weights="imagenet")
    msg = str(e.value)
    assert expected in msg and c.url in msg and str(folder / c.file) in msg  # what, from where, to where
    assert not folder.exists() or not any(folder.iterdir())


def test_offline_fails_at_once(server, folder, monkeypatch):
    c = _serve(monkeypatch, server)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="YOLO_OFFLINE is set") as e:
        create_backbone("repvit_m0_9", weights="imagenet")
    assert time.perf_counter() - t < 5 and server.requests == []
    assert c.url in str(e.value) and str(folder / c.file) in str(e.value)


def test_unreachable_host_fails_within_seconds(folder, monkeypatch):
    """A refused connection (nothing listens on the port): an error naming the file, folder and URL, quickly."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(
        W, "CHECKPOINTS", tuple(replace(c, url=f"http://127.0.0.1:{port}/{c.file}") for c in W.CHECKPOINTS)
    )
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="downloading .* failed"):
        create_backbone("transxnet_t", weights="imagenet")
    assert time.perf_counter() - t < 10


def test_unknown_name_lists_the_published_ones(folder):
    with pytest.raises(CheckpointError, match=r"imagenet, distill_450e, distill_300e|imagenet, distill_300e"):
        create_backbone("repvit_m0_9", weights="in22k")


def test_weights_command(server, folder, monkeypatch, official):
    c = _serve(monkeypatch, server)
    from yolo_plugins.tools.cli import main

    assert main(["weights"]) == 0
    assert main(["weights", "repvit_m0_9", "--no-download"]) == 1  # says where to put it
    assert main(["weights", "repvit_m0_9"]) == 0 and (folder / c.file).read_bytes() == official
    assert main(["weights", "repvit_m0_9", "--no-download"]) == 0


@pytest.mark.slow
def test_checkpoint_of_a_pretrained_model_reloads_without_the_weights(server, folder, monkeypatch, tmp_path):
    """A model built with `imagenet` weights: best.pt reloads in a fresh process under restricted loading with the
    weights folder gone (the weights live in the checkpoint; nothing is looked up or downloaded again)."""
    import shutil

    from ultralytics import YOLO

    _serve(monkeypatch, server)
    yaml = tmp_path / "yolov8n-repvit-imagenet.yaml"
    from yolo_plugins.integration.names import shipped_dir

    text = (shipped_dir() / "yolov8-repvit.yaml").read_text()
    yaml.write_text(text.replace("[{ n: m0_9, s: m1_0, m: m1_1, l: m1_5, x: m2_3 }]", "[m0_9, imagenet]"))
    model = YOLO(str(yaml))
    assert model.model.model[0].variant == "m0_9"
    ckpt = tmp_path / "best.pt"
    model.save(ckpt)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = YOLO(str(ckpt)).model.float().eval()(x)[0]
    shutil.rmtree(folder)
    got = fresh_process_output(ckpt, x, tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1", "YOLO_OFFLINE": "1"})
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
    assert not folder.exists()
