"""Next-token choice: greedy, temperature, top-k, top-p, seeded per sequence."""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .backend import InputError, NonFiniteError

MAX_TEMPERATURE = 1e4  # beyond this every distribution is uniform to float precision
MAX_SEED = 2**63 - 1


def check_int(name: str, value, low: int, high: int) -> int:
    """value as an int in [low, high], else InputError naming it (bools and floats are refused)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_float(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise InputError(f"{name} must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return value


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy (argmax). top_k 0 = no limit. top_p 1.0 = no nucleus cut. Every field is
    range-checked here (InputError, a ValueError)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_float("temperature", self.temperature, 0.0, MAX_TEMPERATURE))
        object.__setattr__(self, "top_k", check_int("top_k", self.top_k, 0, 2**31 - 1))
        object.__setattr__(self, "top_p", check_float("top_p", self.top_p, 0.0, 1.0, low_open=True))
        if self.seed is not None:
            object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_sampling(sampling) -> SamplingParams:
    if not isinstance(sampling, SamplingParams):
        raise InputError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
    return sampling


def check_seeds(seeds, count: int, what: str) -> Optional[list]:
    """Per-sequence seeds: None, or `count` integers in [0, MAX_SEED] (one per prompt or source)."""
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__") or len(seeds) != count:
        raise InputError(f"seeds must be a list of {count} integers, one per {what}, got {seeds!r}")
    return [check_int("seed", s, 0, MAX_SEED) for s in seeds]


def sample_token(logits: np.ndarray, params: SamplingParams, rng: Optional[np.random.Generator]) -> int:
    """One token from logits [V]; NonFiniteError when any logit is NaN or infinite."""
    if not np.isfinite(logits).all():
        raise NonFiniteError("logits contain NaN or infinity (the state or the weights are not finite)")
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64)
    z = (z - z.max()) / params.temperature  # <= 0 everywhere, 0 at the max: no overflow at any temperature
    if params.top_k and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = cumulative - p[order] < params.top_p  # the smallest prefix whose mass reaches top_p
        cut = np.zeros_like(p)
        cut[order[keep]] = p[order[keep]]
        p = cut / cut.sum()
    return int(rng.choice(p.size, p=p))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
