"""rfa::CausalGatedScan: the causal gated random-feature scan (contract: docs/op_contract.md)."""

from .chunk import chunk_causal_gated_scan
from .naive import naive_causal_gated_scan
from .op import causal_gated_scan
from .readout import DEFAULT_EPS, bounded_readout
from .validate import check_scan_inputs

__all__ = [
    "DEFAULT_EPS",
    "bounded_readout",
    "causal_gated_scan",
    "check_scan_inputs",
    "chunk_causal_gated_scan",
    "naive_causal_gated_scan",
]
