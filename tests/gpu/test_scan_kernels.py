"""The native CUDA kernels of the scan (torch.ops.rfa.causal_gated_scan and its int8/bf16 states), against the
float64 reference."""

import pytest
import torch

from helpers import rel_err, scan_inputs
from rfa_export.ops.causal_gated_scan import (causal_gated_scan, cuda_causal_gated_scan,
                                              naive_causal_gated_scan)

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


CASES = [  # B, T, H, F, Dv, gate, initial state
    (1, 1, 2, 32, 32, "random", False),
    (4, 1, 16, 128, 64, "random", True),
    (2, 1, 2, 256, 256, None, True),
    (2, 9, 3, 64, 48, None, False),
    (1, 4097, 2, 128, 64, "random", True),
    (64, 6, 16, 64, 32, "random", True),  # B*H = 1024
    (2, 257, 2, 128, 64, "near0", True),
    (2, 257, 2, 128, 64, "near1", True),
    (1, 130, 2, 256, 256, "random", True),  # clusters of 4 value tiles
    (1, 100, 2, 96, 80, None, True),  # a partial value tile
]


# path None = dispatch, 0 = chunked, 1 = one step launch per time step (not run at T = 4097: one launch
# per step, and the shorter cases cover it)
RUNS = [(case, path) for case in CASES for path in (None, 0, 1) if not (path == 1 and case[1] > 1000)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case, path", RUNS, ids=lambda x: "B{}-T{}-H{}-F{}-Dv{}-{}-s0{}".format(*x) if isinstance(x, tuple) else f"path{x}")
def test_kernels_match_float64_reference(case, dtype, path):
    B, T, H, F, Dv, gate, s0 = case
    q, k, v, g, s = scan_inputs(B, T, H, F, Dv, gate=gate, initial_state=s0, seed=B * T + F)
    low = [t.to(dtype) if t is not None else None for t in (q, k, v, g)]
    ref, ref_state = naive_causal_gated_scan(*[t.double() if t is not None else None for t in low],
                                             None if s is None else s.double())
    dev = [t.cuda() if t is not None else None for t in low]
    s_dev = None if s is None else s.float().cuda()
    out = torch.full((B, T, H, Dv), float("nan"), dtype=dtype, device="cuda")
    state = torch.full((B, H, F, Dv + 1), float("nan"), device="cuda")
    got, got_state = cuda_causal_gated_scan(*dev, s_dev, path=path, out=out, out_state=state)
    torch.cuda.synchronize()
    assert torch.isfinite(got.float()).all() and torch.isfinite(got_state).all()
    assert rel_err(got.cpu(), ref) <= TOL[dtype]
    assert rel_err(got_state.cpu(), ref_state) <= TOL[dtype]


def test_in_place_state_update():
    q, k, v, g, s = scan_inputs(2, 50, 2, 64, 32, gate="random", initial_state=True)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s)
    for T, slc in ((50, slice(None)), (1, slice(0, 1))):
        dev = [t[:, slc].float().cuda() for t in (q, k, v, g)]
        state = s.float().cuda()
        ptr = state.data_ptr()
        _, new = cuda_causal_gated_scan(*dev, state, out_state=state)
        assert new.data_ptr() == ptr
        want = ref_state if T == 50 else naive_causal_gated_scan(q[:, :1], k[:, :1], v[:, :1], g[:, :1], s)[1]
        assert rel_err(new.cpu(), want) <= 1e-5


def test_exact_gates_of_zero_and_one():
    q, k, v, g, s = scan_inputs(2, 200, 2, 64, 64, gate="random", initial_state=True, kind="arccos")
    g = g.clone()
    g[:, ::3] = 0.0
    g[:, 1::3] = 1.0
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s)
    for dtype in (torch.float32, torch.bfloat16):
        low = [t.to(dtype).cuda() for t in (q, k, v, g)]
        ref_l, ref_state_l = naive_causal_gated_scan(*[t.double().cpu() for t in low], s)
        out, state = cuda_causal_gated_scan(*low, s.float().cuda())
        assert rel_err(out.cpu(), ref_l) <= TOL[dtype] and rel_err(state.cpu(), ref_state_l) <= TOL[dtype]


def test_torch_op_dispatches_to_the_kernels_and_model_decodes():
    from rfa_export.model import RFAConfig, RFALanguageModel

    q, k, v, g, s = scan_inputs(2, 40, 4, 64, 32, gate="random", initial_state=True, dtype=torch.float32)
    cpu_out, cpu_state = causal_gated_scan(q, k, v, g, s)
    gpu_out, gpu_state = causal_gated_scan(q.cuda(), k.cuda(), v.cuda(), g.cuda(), s.cuda())
    assert rel_err(gpu_out.cpu(), cpu_out) <= 1e-5 and rel_err(gpu_state.cpu(), cpu_state) <= 1e-5
    model = RFALanguageModel(RFAConfig(d_model=128, n_heads=4, n_layers=2, d_ffn=256, num_features=32)).eval().cuda()
    ids = torch.randint(0, 256, (3, 300), device="cuda")
    with torch.no_grad():
        full, _ = model(ids)
        state = model.initial_state(3, device="cuda")
        steps = []
        for t in range(300):
            lo, state = model.step(ids[:, t], state, torch.full((3,), t, device="cuda"))
            steps.append(lo)
    assert rel_err(torch.stack(steps, 1).cpu(), full.cpu()) <= 1e-5


def test_bad_shapes_are_refused():
    q = torch.zeros(1, 4, 1, 20, device="cuda")
    v = torch.zeros(1, 4, 1, 32, device="cuda")
    with pytest.raises(RuntimeError, match="F must be a multiple of 16"):
        cuda_causal_gated_scan(q, q, v)
    # the torch op falls back to the chunked path for shapes the kernels do not take
    out, _ = causal_gated_scan(q, q, v)
    assert out.shape == (1, 4, 1, 32)


def test_inplace_op_on_cuda_aliases_the_state():
    from rfa_export.ops.causal_gated_scan import causal_gated_scan_

    q, k, v, g, s = scan_inputs(3, 1, 4, 64, 32, gate="random", initial_state=True, dtype=torch.float32)
    want, want_state = naive_causal_gated_scan(q.double(), k.double(), v.double(), g.double(), s.double())
    state = s.cuda()
    ptr = state.data_ptr()
    out = causal_gated_scan_(q.cuda(), k.cuda(), v.cuda(), g.cuda(), state)
    assert state.data_ptr() == ptr
    assert rel_err(out.cpu(), want) <= 1e-5 and rel_err(state.cpu(), want_state) <= 1e-5


# The kernel's bf16 state against the unrounded float64 one: half a bf16 ulp is up to 2^-8 of an entry; 2^-7
# leaves room for fp32's own error over long sequences and still catches truncation or a wrong widening.
BF16_STATE_TOL = 2.0**-7


def bf16_state_reference(qkvg, s16, per_step):
    """float64 output and state from a bf16 state, rounded once (one call) or after every step (path 1: one
    launch, so one call, per time step)."""
    if not per_step:
        return naive_causal_gated_scan(*qkvg, s16.double())
    outs, state = [], s16
    for t in range(qkvg[0].shape[1]):  # [B, T, ...]
        out, state = naive_causal_gated_scan(*[x[:, t : t + 1] if x is not None else None for x in qkvg],
                                             state.double())
        outs.append(out)
        state = state.to(torch.bfloat16)
    return torch.cat(outs, 1), state.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case, path", [(c, p) for c, p in RUNS if c[6]],
                         ids=lambda x: "B{}-T{}-H{}-F{}-Dv{}-{}-s0{}".format(*x) if isinstance(x, tuple) else f"path{x}")
def test_bf16_state_matches_float64_reference(case, dtype, path):
    """A bf16 state (docs/op_contract.md, "State dtype"): read widened, accumulated in fp32, rounded once at
    the end, on every path, in place and not."""
    B, T, H, F, Dv, gate, _ = case
    q, k, v, g, s = scan_inputs(B, T, H, F, Dv, gate=gate, initial_state=True, seed=B * T + F + 7)
    s16 = s.to(torch.bfloat16)
    low = [t.to(dtype) if t is not None else None for t in (q, k, v, g)]
    ref, ref_state = bf16_state_reference([t.double() if t is not None else None for t in low], s16,
                                          per_step=path == 1)
    dev = [t.cuda() if t is not None else None for t in low]
    for in_place in (False, True):
        state_in = s16.cuda()
        out_state = state_in if in_place else torch.full((B, H, F, Dv + 1), float("nan"), device="cuda", dtype=torch.bfloat16)
        got, got_state = cuda_causal_gated_scan(*dev, state_in, path=path, out_state=out_state)
        torch.cuda.synchronize()
        assert got_state.dtype == torch.bfloat16 and got_state.data_ptr() == out_state.data_ptr()
        assert torch.isfinite(got.float()).all() and torch.isfinite(got_state.float()).all()
        # path 1 rounds the state every step: the kernel's and the reference's may round apart by a bf16 step
        # (2^-8 of an entry), which later outputs carry
        assert rel_err(got.cpu(), ref) <= (max(TOL[dtype], 2.0**-8) if path == 1 else TOL[dtype])
        assert rel_err(got_state.cpu(), ref_state) <= max(TOL[dtype], BF16_STATE_TOL)
        # rounded to nearest, not truncated: on average no bias against the float64 result
        bias = (got_state.double().cpu() - ref_state).mean() / ref_state.abs().max()
        assert abs(float(bias)) <= 2e-4


def test_torch_op_takes_a_bf16_state_on_cuda():
    q, k, v, g, s = scan_inputs(2, 33, 2, 64, 32, gate="random", initial_state=True)
    s16 = s.to(torch.bfloat16)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s16.double())
    out, state = causal_gated_scan(*(t.float().cuda() for t in (q, k, v, g)), s16.cuda())
    assert state.dtype == torch.bfloat16
    assert rel_err(out.cpu(), ref) <= 1e-5 and rel_err(state.cpu(), ref_state) <= BF16_STATE_TOL


INT8_CASES = [  # B, T, H, F, Dv, gate, a fresh (all-zero) state
    (3, 1, 2, 64, 64, "random", False), (2, 1, 3, 16, 16, "near1", False), (1, 1, 2, 256, 256, "random", False),
    (5, 1, 1, 128, 32, "random", False), (2, 1, 2, 32, 112, "near0", False),  # the step kernel, every Dv class
    (2, 65, 3, 64, 48, "random", False), (3, 40, 2, 32, 256, "near0", True),   # prefills
    (1, 1600, 2, 128, 64, "near1", False),  # bf16: the Hopper prefill splits it in the workspace after the state
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B, T, H, F, Dv, gate, zeros", INT8_CASES)
def test_int8_state_matches_float64_reference(B, T, H, F, Dv, gate, zeros, dtype):
    """An int8-row state. A step (causal_gated_scan_step_int8.cu): each row widened, updated in fp32 and stored
    again with its least exponent, codes rounded to nearest. A prefill (T > 1): widened into the workspace, the
    chunked kernel on that fp32 copy, narrowed once (int8_rows.cu), and refused without the workspace. Every
    entry within half its row's code step of the unrounded float64 state (plus fp32's error, or for a prefill
    the dtype's), in place and not."""
    from rfa_export.ops.causal_gated_scan.state_storage import narrow_state, widen_state

    q, k, v, g, s = scan_inputs(B, T, H, F, Dv, gate=gate, initial_state=True, seed=B + F + Dv + T - 1)
    s8 = narrow_state(torch.zeros_like(s) if zeros else s, torch.int8)
    low = [t.to(dtype) for t in (q, k, v, g)]
    ref, ref_state = naive_causal_gated_scan(*[t.double() for t in low], widen_state(s8, Dv, torch.float64))
    half_step = torch.exp2(narrow_state(ref_state, torch.int8)[..., -1:].double()) / 2
    computed = 1e-6 * ref_state.abs().amax(-1, keepdim=True) if T == 1 else TOL[dtype] * ref_state.abs().max()
    dev = [t.cuda() for t in low]
    for in_place in (False, True):
        state_in = s8.cuda()
        out_state = state_in if in_place else torch.full((B, H, F, Dv + 2), -128, device="cuda", dtype=torch.int8)
        got, got_state = cuda_causal_gated_scan(*dev, state_in, out_state=out_state)
        torch.cuda.synchronize()
        assert got_state.dtype == torch.int8 and got_state.data_ptr() == out_state.data_ptr()
        assert torch.isfinite(got.float()).all()
        assert rel_err(got.cpu(), ref) <= TOL[dtype]
        stored = got_state.cpu()
        assert int(stored[..., :-1].abs().max()) <= 127
        err = (widen_state(stored, Dv, torch.float64) - ref_state).abs()
        assert bool((err <= half_step * (1 + 1e-3) + computed).all())
        # the exponents are the least that fit (a tie in fp32 may move a row by one)
        want = narrow_state(ref_state, torch.int8)[..., -1]
        assert int((stored[..., -1].int() - want.int()).abs().max()) <= 1
    if T > 1:
        with pytest.raises(RuntimeError, match="rfa_scan_state_workspace_size"):
            cuda_causal_gated_scan(*dev, s8.cuda(), path=0,
                                   out_state=torch.empty((B, H, F, Dv + 2), device="cuda", dtype=torch.int8))


def test_torch_op_takes_an_int8_state_on_cuda():
    """Prefill (T > 1: widened into the workspace around the fp32 chunked kernel) and steps (the int8 step
    kernel) against float64."""
    from rfa_export.ops.causal_gated_scan.state_storage import narrow_state, widen_state

    q, k, v, g, s = scan_inputs(2, 33, 2, 64, 32, gate="random", initial_state=True)
    s8 = narrow_state(s, torch.int8)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, widen_state(s8, 32, torch.float64))
    out, state = causal_gated_scan(*(t.float().cuda() for t in (q, k, v, g)), s8.cuda())
    assert state.dtype == torch.int8 and state.shape == (2, 2, 64, 34)
    assert rel_err(out.cpu(), ref) <= 1e-5
    assert rel_err(widen_state(state.cpu(), 32, torch.float64), ref_state) <= 2 / 127
    state = s8.cuda()
    from rfa_export.ops.causal_gated_scan import causal_gated_scan_

    outs = [causal_gated_scan_(*(t[:, i : i + 1].float().cuda() for t in (q, k, v, g)), state) for i in range(33)]
    ref_steps, rs = [], s8
    for i in range(33):
        o, rs = naive_causal_gated_scan(*(t[:, i : i + 1] for t in (q, k, v, g)), rs)  # rounds per step
        ref_steps.append(o)
    assert rel_err(torch.cat(outs, 1).cpu(), torch.cat(ref_steps, 1)) <= 1e-3
    assert rel_err(widen_state(state.cpu(), 32, torch.float64), widen_state(rs, 32, torch.float64)) <= 4 / 127
