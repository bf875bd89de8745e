"""The random feature maps phi, registered once: name, feature size, the map itself and its kernel code.

A new map is one entry here (and its branch in plugins/kernels/feature_map.cuh for the CUDA kernels, which
select it by `kernel_code`); an unknown name is an error everywhere. The maps act on the projections
W x_hat, [..., D] -> [..., F]; torch is imported when a map is applied, so this module stays light.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict


@dataclass(frozen=True)
class FeatureMap:
    name: str
    features_per_projection: int  # F = features_per_projection * D
    kernel_code: int  # rfa_feature_kind_t (plugins/kernels/random_features.h)
    apply: Callable  # (proj [..., D] float tensor) -> [..., F]
    description: str

    def feature_size(self, num_features: int) -> int:
        return self.features_per_projection * num_features


def _gaussian(proj):
    import torch

    return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) * (1.0 / math.sqrt(proj.shape[-1]))


def _arccos(proj):
    import torch

    return torch.relu(proj) * math.sqrt(2.0 / proj.shape[-1])


FEATURE_MAPS: Dict[str, FeatureMap] = {
    m.name: m for m in (
        FeatureMap("gaussian", 2, 0, _gaussian, "D^-1/2 [sin(W x), cos(W x)]: estimates exp(-|x - y|^2 sigma^2 / 2)"),
        FeatureMap("arccos", 1, 1, _arccos, "(2/D)^1/2 relu(W x): the order-1 arc-cosine kernel"),
    )
}


def feature_map(name: str) -> FeatureMap:
    """The registered map `name`; ValueError for any other name."""
    try:
        return FEATURE_MAPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown feature map {name!r}; registered: {', '.join(FEATURE_MAPS)}") from None
