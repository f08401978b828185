"""minimistral: Mistral 7B built from scratch, one piece per notebook."""

from .attention import attention_mask, causal_mask, sliding_window_mask
from .cache import RollingKVCache
from .config import ModelArgs
from .generate import generate, generate_stream, sample_next, sampling_probs
from .model import Transformer
from .tokenizer import Tokenizer

__version__ = "0.1.0"
