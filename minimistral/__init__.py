"""minimistral: Mistral 7B built from scratch, one piece per notebook.

The model core sits at the top of the package, one module per piece, in the order the course builds them:
config, tokenizer, norm, rope, attention, mlp, model, cache, generate; then loading checkpoints (convert,
weights), quantization and device choice (quant, device), and the fast GPU path (fuse, fast). The course's
tools live in subpackages: storage (writing checkpoints and files without loss), viz (pictures and explorers),
labs (exercise checks, student edition, grading), train (the corpus and the training loop of notebook 10), lora
(LoRA and QLoRA, notebook 14), planner (notebook 11's memory planner), bench (benchmarks and the GPU checks).
"""

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
    "load_checkpoint": "weights", "save_checkpoint": "storage.checkpoints", "write_random_checkpoint": "storage.checkpoints",
    "quantize": "quant", "quant": None, "device": None,
    "weights": None, "storage": None, "convert": None, "fast": None,
    "viz": None, "labs": None, "train": None, "bench": None, "lora": None, "planner": None,
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'minimistral' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)
