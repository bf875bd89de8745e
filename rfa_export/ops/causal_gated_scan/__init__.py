"""rfa::CausalGatedScan: the causal gated random-feature scan (contract: docs/op_contract.md)."""

from .chunk import chunk_causal_gated_scan
from .cuda import cuda_causal_gated_scan, kernel_supports, kernels_available
from .naive import naive_causal_gated_scan
from .op import causal_gated_scan, causal_gated_scan_
from .readout import DEFAULT_EPS, bounded_readout
from .validate import check_scan_inputs

__all__ = [
    "DEFAULT_EPS",
    "bounded_readout",
    "causal_gated_scan",
    "causal_gated_scan_",
    "check_scan_inputs",
    "chunk_causal_gated_scan",
    "cuda_causal_gated_scan",
    "kernel_supports",
    "kernels_available",
    "naive_causal_gated_scan",
]
