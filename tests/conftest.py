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
