"""rfa::CausalGatedScan: chunked and custom-op paths against the sequential float64 reference."""

import pytest
import torch

from helpers import rel_err, scan_inputs
from rfa_export.ops.causal_gated_scan import (
    DEFAULT_EPS,
    bounded_readout,
    causal_gated_scan,
    check_scan_inputs,
    chunk_causal_gated_scan,
    naive_causal_gated_scan,
)

SHAPES = [  # B, T, H, F, Dv, chunk
    (1, 1, 1, 8, 4, 64),
    (2, 1, 3, 16, 8, 4),
    (2, 37, 3, 16, 8, 8),  # T not a multiple of the chunk
    (1, 200, 2, 32, 16, 64),
    (3, 65, 2, 8, 5, 16),
    (16, 5, 64, 8, 4, 4),  # B*H = 1024
]


@pytest.mark.parametrize("B,T,H,F,Dv,chunk", SHAPES)
@pytest.mark.parametrize("gate", [None, "random", "near0", "near1"])
@pytest.mark.parametrize("initial_state", [False, True])
def test_chunk_matches_naive_float64(B, T, H, F, Dv, chunk, gate, initial_state):
    q, k, v, g, s0 = scan_inputs(B, T, H, F, Dv, gate=gate, initial_state=initial_state, seed=T * 7 + B)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s0)
    out, state = chunk_causal_gated_scan(q, k, v, g, s0, chunk_size=chunk)
    assert out.dtype == state.dtype == torch.float64
    assert rel_err(out, ref) <= 1e-10
    assert rel_err(state, ref_state) <= 1e-10


@pytest.mark.parametrize("kind", ["gaussian", "arccos"])
@pytest.mark.parametrize("gate", [None, "random"])
def test_custom_op_matches_naive(kind, gate):
    q, k, v, g, s0 = scan_inputs(2, 100, 4, 16, 8, gate=gate, initial_state=True, kind=kind)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s0)
    out, state = torch.ops.rfa.causal_gated_scan(q, k, v, g, s0, DEFAULT_EPS)
    assert rel_err(out, ref) <= 1e-10 and rel_err(state, ref_state) <= 1e-10
    out2, _ = causal_gated_scan(q, k, v, g, s0)
    assert torch.equal(out, out2)


def test_naive_keeps_s_and_z_apart_from_the_combined_state():
    """The reference's S/z recurrence, written out by hand for 2 steps."""
    q, k, v, g, s0 = scan_inputs(1, 2, 1, 4, 3, gate="random", initial_state=True)
    S, z = s0[0, 0, :, :3], s0[0, 0, :, 3]
    outs = []
    for t in range(2):
        gt, kt, vt, qt = g[0, t, 0], k[0, t, 0], v[0, t, 0], q[0, t, 0]
        S = gt * S + (1 - gt) * torch.outer(kt, vt)
        z = gt * z + (1 - gt) * kt
        outs.append((qt @ S) / (qt @ z))
    out, state = naive_causal_gated_scan(q, k, v, g, s0)
    den_ok = all(abs(float(q[0, t, 0] @ z)) > 1e-2 for t in range(2))
    assert den_ok
    assert torch.allclose(out[0, :, 0], torch.stack(outs), rtol=1e-12, atol=0)
    assert torch.allclose(state[0, 0], torch.cat([S, z[:, None]], 1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("gate", [None, "random"])
def test_gradcheck_float64(gate):
    q, k, v, g, s0 = scan_inputs(2, 9, 2, 4, 3, gate=gate, initial_state=True, kind="arccos")
    q = q + 0.05  # keep den well away from the clamp so the function is smooth where checked
    k = k + 0.05
    inputs = [t.requires_grad_() for t in (q, k, v, g, s0) if t is not None]

    def f(*args):
        if g is None:
            q_, k_, v_, s_ = args
            g_ = None
        else:
            q_, k_, v_, g_, s_ = args
        out, state = causal_gated_scan(q_, k_, v_, g_, s_)
        return out, state

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradients_reach_the_model_through_the_op():
    q, k, v, g, s0 = scan_inputs(1, 20, 2, 8, 4, gate="random")
    g.requires_grad_()
    out, state = causal_gated_scan(q, k, v, g, None)
    (out.sum() + state.sum()).backward()
    assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


# --- the normaliser ---------------------------------------------------------------------------------


def test_readout_exact_when_ratio_is_small():
    num = torch.tensor([[2.0, -3.0, 0.5]], dtype=torch.float64)
    den = torch.tensor([0.25], dtype=torch.float64)
    assert torch.equal(bounded_readout(num, den, 1e-3), num / den)


@pytest.mark.parametrize("den_value", [0.0, -1.0, -1e-30, 1e-30, 1e-7])
def test_readout_bounded_for_bad_denominators(den_value):
    eps = 1e-3
    num = torch.tensor([[5.0, -20.0, 1.0]], dtype=torch.float64)
    out = bounded_readout(num, torch.tensor([den_value], dtype=torch.float64), eps)
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) == pytest.approx(1 / eps, rel=1e-12)
    assert torch.equal(torch.sign(out), torch.sign(num))


def test_readout_zero_over_zero_is_zero():
    out = bounded_readout(torch.zeros(2, 4), torch.tensor([0.0, -1.0]))
    assert torch.equal(out, torch.zeros(2, 4))


def test_readout_scale_invariant():
    num = torch.randn(64, 8, dtype=torch.float64)
    den = torch.randn(64, dtype=torch.float64)
    for c in (1e-30, 1e-8, 1e8, 1e30):
        assert torch.allclose(bounded_readout(num * c, den * c), bounded_readout(num, den), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_adversarial_scan_stays_bounded(dtype):
    """q orthogonal to z (den exactly 0), q opposite to z (den < 0), huge v, gates of exactly 0 and 1."""
    B, T, H, F, Dv = 1, 6, 1, 4, 3
    k = torch.zeros(B, T, H, F)
    k[0, :, 0, 0] = 1.0  # z points along e0
    q = torch.zeros(B, T, H, F)
    q[0, 0, 0, 1] = 1.0  # den = 0
    q[0, 1, 0, 0] = -1.0  # den < 0
    q[0, 2, 0] = torch.tensor([1e-4, 1.0, 0.0, 0.0])  # tiny positive den
    q[0, 3:, 0, 0] = 1.0
    v = torch.full((B, T, H, Dv), 3e4)
    v[..., 1] = -3e4
    g = torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0, 0.999]).view(B, T, H)
    eps = DEFAULT_EPS
    for gate in (None, g):
        for impl in (naive_causal_gated_scan, chunk_causal_gated_scan):
            args = [t.to(dtype) for t in (q, k, v)] + [None if gate is None else gate.to(dtype)]
            out, state = impl(*args, None, eps)
            assert out.dtype == dtype and state.dtype == torch.float32
            assert torch.isfinite(out).all() and torch.isfinite(state).all()
            bound = (1 / eps) * (1 + 1e-2)
            assert float(out.float().abs().max()) <= bound
        # both implementations agree on the adversarial rows too
        a, _ = naive_causal_gated_scan(q.double(), k.double(), v.double(), None if gate is None else gate.double())
        b, _ = chunk_causal_gated_scan(q.double(), k.double(), v.double(), None if gate is None else gate.double(), chunk_size=4)
        assert rel_err(b, a) <= 1e-12


def test_gate_one_leaves_state_unchanged_and_zero_resets_it():
    q, k, v, _, s0 = scan_inputs(2, 5, 2, 8, 4, initial_state=True)
    ones = torch.ones(2, 5, 2, dtype=torch.float64)
    for impl in (naive_causal_gated_scan, chunk_causal_gated_scan):
        _, state = impl(q, k, v, ones, s0)
        assert torch.equal(state, s0)
        zeros = torch.zeros(2, 5, 2, dtype=torch.float64)
        _, state = impl(q, k, v, zeros, s0)
        last = torch.cat([k[:, -1, :, :, None] * v[:, -1, :, None, :], k[:, -1, :, :, None]], -1)
        assert torch.allclose(state, last, rtol=1e-12, atol=1e-15)


# --- long recurrences ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("gate", [None, "random"])
def test_65536_steps_fp32_and_bf16(gate):
    """Bounds: fp32 state+activations 1e-5 relative; bf16 activations (reference fed the same rounded
    inputs) 1e-2, the precision of the bf16 output itself."""
    T = 65536
    q, k, v, g, _ = scan_inputs(1, T, 1, 64, 8, gate=gate, seed=3)  # D = 32: den well conditioned
    for dtype, bound in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        args = [t.to(dtype) if t is not None else None for t in (q, k, v, g)]
        out, state = chunk_causal_gated_scan(*args)
        assert torch.isfinite(out.float()).all() and torch.isfinite(state).all()
        ref, ref_state = naive_causal_gated_scan(*[t.double() if t is not None else None for t in args])
        assert rel_err(out, ref) <= bound, (dtype, rel_err(out, ref))
        assert rel_err(state, ref_state) <= 1e-5, (dtype, rel_err(state, ref_state))


# --- input checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(q=a["q"][..., :-1]), "k_feat must match"),
        (lambda a: a.update(v=a["v"][:, :, :1]), "v must be"),
        (lambda a: a.update(g=a["g"][:, :-1]), "g must be"),
        (lambda a: a.update(s0=a["s0"][..., :-1]), "initial_state must be"),
        (lambda a: a.update(s0=a["s0"].half()), "initial_state dtype"),
        (lambda a: a.update(k=a["k"].half()), "k_feat dtype"),
        (lambda a: a.update(q=a["q"][0]), "q_feat must be"),
    ],
)
def test_bad_inputs_are_named(mutate, message):
    q, k, v, g, s0 = scan_inputs(2, 3, 2, 4, 3, gate="random", initial_state=True, dtype=torch.float32)
    a = dict(q=q, k=k, v=v, g=g, s0=s0)
    mutate(a)
    with pytest.raises(ValueError, match=message):
        check_scan_inputs(a["q"], a["k"], a["v"], a["g"], a["s0"])
    with pytest.raises(ValueError, match=message):
        causal_gated_scan(a["q"], a["k"], a["v"], a["g"], a["s0"])
