"""Test helpers: random inputs of the CausalGatedScan contract (realistic random-feature q/k) and errors."""

import contextlib
import math
import signal
from pathlib import Path

import torch


def random_features(shape, kind: str, dtype=torch.float64, generator=None, head_dim: int = 8) -> torch.Tensor:
    """[B, T, H, F] features the way the model makes them: phi of random unit vectors through one fixed
    random matrix per head, sin/cos (either sign, positive kernel on average) or ReLU (>= 0)."""
    B, T, H, F = shape
    D = F // 2 if kind == "gaussian" else F
    x = torch.randn(B, T, H, head_dim, dtype=torch.float64, generator=generator)
    x = x / x.norm(dim=-1, keepdim=True)
    w = torch.randn(H, D, head_dim, dtype=torch.float64, generator=generator)
    proj = torch.einsum("bthd,hfd->bthf", x, w)
    if kind == "gaussian":
        feat = torch.cat([proj.sin(), proj.cos()], -1) / math.sqrt(D)
    else:
        feat = proj.relu() * math.sqrt(2.0 / D)
    return feat.to(dtype)


def scan_inputs(B, T, H, F, Dv, *, gate="random", initial_state=False, kind="gaussian", dtype=torch.float64, seed=0):
    """q, k, v, g, s0 with g one of: None, "random" (0.5..0.999), "near0" (1e-7..1e-3), "near1" (1 - 1e-7..1e-3)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = random_features((2 * B, T, H, F), kind, dtype, gen).chunk(2)
    v = torch.randn(B, T, H, Dv, dtype=torch.float64, generator=gen).to(dtype)
    u = torch.rand(B, T, H, dtype=torch.float64, generator=gen)
    g = {
        None: None,
        "random": 0.5 + 0.499 * u,
        "near0": 10 ** (-7 + 4 * u),
        "near1": 1 - 10 ** (-7 + 4 * u),
    }[gate]
    g = None if g is None else g.to(dtype)
    s0 = None
    if initial_state:
        s0 = torch.randn(B, H, F, Dv + 1, dtype=torch.float64, generator=gen) * 0.1
        s0[..., Dv] = s0[..., Dv].abs() + 0.5  # a plausible normaliser column
        s0 = s0.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return q, k, v, g, s0


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|, in float64."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def small_language_model(model_class, n_layers: int = 3, d_ffn: int = 256, d_model: int = 128):
    """(model in eval mode, its config, token ids [2, 9]): a seeded small RFALanguageModel or
    SoftmaxLanguageModel (both take an RFAConfig), gated, sinusoidal positions, head dim 64."""
    from rfa_export.model import RFAConfig

    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=d_model, n_heads=d_model // 64, n_layers=n_layers, d_ffn=d_ffn,
                    num_features=64, gated=True, positional="sinusoidal")
    return model_class(cfg).eval(), cfg, torch.randint(0, 300, (2, 9))


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the block after `seconds` (a hang becomes a failure, not a stuck run)."""
    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reseal(out_dir):
    """Record the current content of out_dir/model.onnx as its digest, and its metadata as the JSON beside
    it: what a faulty exporter would have written."""
    import onnx

    from rfa_export.format.metadata import metadata_from_model
    from rfa_export.format.model_file import seal_model

    out_dir = Path(out_dir)
    model = onnx.load(str(out_dir / "model.onnx"))
    meta = metadata_from_model(model)
    (out_dir / "model.onnx").write_bytes(seal_model(model, meta))
    (out_dir / "rfa_export.json").write_text(meta.to_json())


def workspace_bounds(lib: Path):
    """rfa_scan_workspace_bound of a built librfa_kernels.so for fp32, fp16, bf16: a pure function of the dtype and
    the build (no GPU needed)."""
    import ctypes

    bound = ctypes.CDLL(str(lib)).rfa_scan_workspace_bound
    bound.argtypes, bound.restype = [ctypes.c_int], ctypes.c_size_t
    return [bound(dtype) for dtype in (0, 1, 2)]


def shard_items(items: list, spec: str) -> tuple:
    """(kept, deselected) for RFA_TEST_SHARD=spec "i/n" (tests/conftest.py): the items at positions i, i + n,
    i + 2n, ... (0 <= i < n) and the rest; ValueError for anything else."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"RFA_TEST_SHARD={spec!r}: expected i/n, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ValueError(f"RFA_TEST_SHARD={spec!r}: needs 0 <= i < n")
    return items[index::count], [item for k, item in enumerate(items) if k % count != index]


def changing_batch_tokens(decoder, prompts) -> list:
    """The tokens of a ContinuousBatch whose size changes: prompts[0..2] for 30, 10 and 20 tokens, prompts[3]
    joining at step 5 for 15; 40 steps."""
    from rfa_export.runtime import ContinuousBatch

    batch = ContinuousBatch(decoder)
    for i, n in enumerate((30, 10, 20)):
        batch.add(prompts[i], n)
    for step in range(40):
        if step == 5:
            batch.add(prompts[3], 15)
        batch.step()
    return [batch.results[i].tokens for i in range(4)]
