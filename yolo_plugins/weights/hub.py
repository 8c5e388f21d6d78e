"""Official ImageNet checkpoints by name: ``weights="imagenet"`` in ``create_backbone`` or a YAML row.

:data:`CHECKPOINTS` lists the classification checkpoints the official repositories publish (file name and URL as their
READMEs give them). A name resolves to a file in :func:`weights_dir` under its official name; a missing file is
downloaded once: streamed into a temporary file in that folder, checked complete (the announced length) and loadable,
then renamed into place. Nothing is downloaded twice, a partial download never takes a checkpoint's name, and with
``YOLO_OFFLINE`` set or any network failure the error says, at once, which file to put in which folder and where it
comes from.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..paths import cache_dir

__all__ = ["Checkpoint", "CHECKPOINTS", "weights_dir", "find_checkpoint", "resolve_weights", "download"]

_TIMEOUT = 10  # seconds to connect / between reads


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint: backbone ``family`` and ``variant``, its ``tag`` and official ``file`` name and
    ``url``. ``default`` marks the one ``imagenet`` means for that variant."""

    family: str
    variant: str
    tag: str
    file: str
    url: str
    default: bool = False

    @property
    def name(self) -> str:
        return f"{self.family}_{self.variant}"


def _hf(repo: str, file: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{file}"


def _gh(repo: str, release: str, file: str) -> str:
    return f"https://github.com/{repo}/releases/download/{release}/{file}"


def _transnext(variant: str, tag: str, default: bool = False) -> Checkpoint:
    file = f"transnext_{variant}_{tag}.pth"
    repo = f"DaiShiResearch/transnext-{variant}-{tag.replace('_', '-')}"
    return Checkpoint("transnext", variant, tag, file, _hf(repo, file) + "?download=true", default)


def _transxnet(variant: str, tag: str, default: bool = False) -> Checkpoint:
    file = f"transx-{variant}{'' if tag == '224_1k' else '-384'}.pth.tar"
    return Checkpoint("transxnet", variant, tag, file, _gh("LMMMEng/TransXNet", "v1.0", file), default)


def _repvit(variant: str, tag: str, default: bool = False) -> Checkpoint:
    file = f"repvit_{variant}_{tag}.pth"
    return Checkpoint("repvit", variant, tag, file, _gh("THU-MIG/RepViT", "v1.0", file), default)


# The official model zoos: DaiShiResearch/TransNeXt README.md (ImageNet-1K 224 pre-trained and 384 fine-tuned models;
# the 384 fine-tunes keep pretrain_size 224), LMMMEng/TransXNet README.md (release v1.0), THU-MIG/RepViT README.md
# (release v1.0, distilled 300- and 450-epoch checkpoints). `imagenet` = the 224 ImageNet-1K checkpoint; for RepViT
# the 450-epoch one.
CHECKPOINTS: tuple[Checkpoint, ...] = (
    *(_transnext(v, "224_1k", default=True) for v in ("micro", "tiny", "small", "base")),
    *(_transnext(v, "384_1k_ft_1k") for v in ("small", "base")),
    *(_transxnet(v, "224_1k", default=True) for v in ("t", "s", "b")),
    _transxnet("b", "384_1k"),
    *(
        c
        for v in ("m0_9", "m1_0", "m1_1", "m1_5", "m2_3")
        for c in (_repvit(v, "distill_450e", default=True), _repvit(v, "distill_300e"))
    ),
)


def weights_dir() -> Path:
    """``$YOLO_PLUGINS_WEIGHTS_DIR``, else ``weights/`` in the yolo-plugins cache folder (``~/.cache/yolo-plugins``)."""
    env = os.environ.get("YOLO_PLUGINS_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "weights"


def find_checkpoint(family: str, variant: str, spec: str) -> Checkpoint | None:
    """The checkpoint ``spec`` names for this backbone: ``imagenet`` (the variant's default), a tag such as
    ``384_1k`` or ``distill_300e``, or an official file name. None if ``spec`` names none of them."""
    mine = [c for c in CHECKPOINTS if c.family == family and c.variant == variant]
    for c in mine:
        if (spec == "imagenet" and c.default) or spec in (c.tag, c.file):
            return c
    return None


def _offline() -> bool:
    return os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes")


def _place_by_hand(c: Checkpoint, folder: Path) -> str:
    return (
        f"Download {c.url} on a machine with internet and put it at {folder / c.file} (the folder is "
        "$YOLO_PLUGINS_WEIGHTS_DIR, default ~/.cache/yolo-plugins/weights), or pass the file's path as weights."
    )


def resolve_weights(family: str, variant: str, spec: str | os.PathLike, progress: bool = True) -> str:
    """The file to load for ``spec``: an existing path as it is, or a checkpoint name (downloaded if missing).

    Raises:
        CheckpointError: ``spec`` is neither a file nor a checkpoint name of this variant (the message lists the
            names), or the download failed (the message says which file to place where).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path)
    c = find_checkpoint(family, variant, str(spec))
    if c is None:
        names = [x for x in CHECKPOINTS if x.family == family and x.variant == variant]
        known = ", ".join(["imagenet"] + [x.tag for x in names]) if names else "none published"
        raise CheckpointError(
            f"checkpoint file not found: '{spec}'. For {family}_{variant} give a file path or a published "
            f"checkpoint name ({known}); `yolo-plugins weights` lists them all."
        )
    folder = weights_dir()
    target = folder / c.file
    if target.is_file():
        return str(target)
    return str(download(c, folder, progress=progress))


def download(c: Checkpoint, folder: str | os.PathLike, progress: bool = True) -> Path:
    """Download ``c`` into ``folder`` under its official name: a temporary file, renamed only once complete and
    loadable. Returns the path; an existing file is returned as it is."""
    folder = Path(folder)
    target = folder / c.file
    if target.is_file():
        return target
    if _offline():
        raise CheckpointError(f"{c.file} is not in {folder} and YOLO_OFFLINE is set. " + _place_by_hand(c, folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{c.file}.", suffix=".part")
    except OSError as e:
        raise CheckpointError(f"cannot write to {folder} ({e}). " + _place_by_hand(c, folder)) from None
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(c, out, progress)
        from .loading import read_state_dict

        try:
            read_state_dict(tmp)
        except CheckpointError as e:
            raise CheckpointError(f"the download of {c.url} is not a usable checkpoint: {e}") from None
        os.replace(tmp, target)
        return target
    except CheckpointError as e:
        raise CheckpointError(f"{e} " + _place_by_hand(c, folder)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch(c: Checkpoint, out, progress: bool) -> None:
    """Stream ``c.url`` into the open file ``out``; refuse an HTTP error or a body shorter than announced."""
    request = urllib.request.Request(c.url, headers={"User-Agent": "yolo-plugins"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _progress(total, c.file) if progress else None
            done = 0
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except urllib.error.HTTPError as e:
        raise CheckpointError(f"downloading {c.url} failed: HTTP {e.code} {e.reason}.") from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # offline, DNS, refused, timeout, cut connection
        reason = getattr(e, "reason", e)
        raise CheckpointError(f"downloading {c.url} failed: {type(e).__name__}: {reason}.") from None
    if total and done != total:
        raise CheckpointError(f"downloading {c.url} stopped after {done} of {total} bytes.")


def _progress(total: int, desc: str):
    try:
        from ultralytics.utils import TQDM

        return TQDM(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    except ImportError:  # pragma: no cover - Ultralytics is a dependency
        return None
