"""minimistral: Mistral 7B built from scratch, one piece per notebook."""

import importlib

from .attention import attention_mask, causal_mask, sliding_window_mask
from .cache import RollingKVCache
from .config import ModelArgs
from .generate import generate, generate_stream, sample_next, sampling_probs, stream_text
from .model import Transformer
from .tokenizer import Tokenizer

__version__ = "0.1.0"

# Loaded on first use, so `import minimistral` stays light (viz pulls in matplotlib and ipywidgets).
_LAZY = {
    "load_checkpoint": "weights", "save_checkpoint": "weights", "write_random_checkpoint": "weights",
    "quantize": "quant", "quant": None, "device": None,
    "viz": None, "weights": None, "convert": None, "checks": None, "train": None, "corpus": None, "labs": None, "fast": None,
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'minimistral' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)
