import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.fixture
def needs_kernels():
    """Skip, naming the reason, when the native kernel library is not built."""
    from rfa_export.ops.causal_gated_scan import kernels_available
    from rfa_export.ops.causal_gated_scan.cuda import kernels_unavailable_reason

    if not kernels_available():
        pytest.skip(f"native kernels not built: {kernels_unavailable_reason()}")
