"""Published ImageNet checkpoints: the table of official files, their download into the weights folder, and the one
loader that maps a checkpoint onto a backbone (each family supplies its pure ``checkpoint_filter_fn``)."""

from .hub import CHECKPOINTS, Checkpoint, download, find_checkpoint, resolve_weights, weights_dir
from .loading import LoadReport, load_pretrained, read_state_dict

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "LoadReport",
    "download",
    "find_checkpoint",
    "load_pretrained",
    "read_state_dict",
    "resolve_weights",
    "weights_dir",
]
