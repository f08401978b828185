import os
import shutil
from pathlib import Path

import matplotlib

# Draw off-screen in this process only. (Not via os.environ["MPLBACKEND"]: the notebook kernels that
# `pytest --nbval` starts would inherit it, and plt.show() under Agg shows nothing.)
matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core machine: one thread avoids waiting on a busy second core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the one factory for the tests' small models --------------------------------------------------------
# Import it as `from conftest import small_args, small_model` (pytest puts tests/ on the path, as for oracle.py).

SMALL = dict(dim=64, n_layers=2, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2, vocab_size=101,
             norm_eps=1e-5, sliding_window=8, rope_theta=10000.0, max_seq_len=128, dtype="float32")


def small_args(**overrides):
    """A Mistral small enough for any test, with every feature of the 7B's: grouped-query attention (2:1),
    a sliding window shorter than the context, RoPE, SwiGLU. Override any ModelArgs field."""
    import minimistral as mm

    return mm.ModelArgs(**{**SMALL, **overrides})


def small_model(args=None, seed: int = 0, std: float = 0.1, method: str = "normal", **overrides):
    """Transformer(args or small_args(**overrides)) with weights drawn from `seed`, in eval mode.
    std 0.1 on dim 64 gives logits of order 1 and attention far from uniform (greedy decoding wanders)."""
    import minimistral as mm

    args = args if args is not None else small_args(**overrides)
    return mm.Transformer(args).init_weights(method, std=std, seed=seed).eval()


# ---- headless Chromium for the browser tests (test_browser.py: the explorers; test_site_browser.py: the site) ----

CHROMIUM = os.environ.get("MINIMISTRAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_skip_reason():
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set MINIMISTRAL_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright (no 'playwright install' needed)"
    return None


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, not a download) for every browser test of the session."""
    reason = chromium_skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
