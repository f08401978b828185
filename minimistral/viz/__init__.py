"""Seeing inside the model: attention maps and the rolling KV cache (notebooks 04, 05, 08, 09, 11).

One module per job:

- `capture.py`: `capture_attention(model, ...)` records attention probabilities during a forward pass,
  refusing, before anything runs, a record larger than `max_bytes`. Needs torch only, no matplotlib.
- `plots.py`: static pictures of attention and token probabilities (each returns a matplotlib Figure).
- `cache_plots.py`: static pictures of the sliding window and the rolling KV cache.
- `explorers.py`: ipywidgets explorers (sliders over a picture), and their static fallback.
- `map.py`: the course map: the model diagram (notebook 00) and the "you are here" strip.

Every public name is reachable from here (`mm.viz.plot_attention(...)`, `from minimistral import viz`).
The picture modules load on first use, so capturing attention does not import matplotlib.
"""

import importlib

from .capture import GiB, AttentionCapture, capture_attention, capture_bytes, check_capture_size

_LAZY = {  # name -> module that defines it
    **dict.fromkeys(["MAX_MAP_PIXELS", "MAX_TOKEN_LABELS", "token_labels", "plot_attention", "plot_head_grid",
                     "plot_attention_distance", "plot_attention_sinks", "plot_token_probs"], "plots"),
    **dict.fromkeys(["plot_window_mask", "plot_receptive_field", "plot_cache_slots", "plot_cache_memory"],
                    "cache_plots"),
    **dict.fromkeys(["StaticExplorer", "attention_explorer", "cache_explorer", "mask_explorer", "explorer"],
                    "explorers"),
    **dict.fromkeys(["model_diagram", "you_are_here"], "map"),
}
__all__ = ["GiB", "AttentionCapture", "capture_attention", "capture_bytes", "check_capture_size", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("plots", "cache_plots", "explorers", "map"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minimistral.viz' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
