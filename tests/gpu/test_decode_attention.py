"""The fused decode step (features + gate + scan step in one kernel) against the float64 composition, and
the model's use of it."""

import zlib

import pytest
import torch

from helpers import rel_err
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.ops.causal_gated_scan import naive_causal_gated_scan
from rfa_export.ops.random_features import naive_random_features
from rfa_export.ops.decode_attention import (cuda_decode_attention_step_, decode_attention_kernel_supports,
                                             naive_decode_attention_step)

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def projections(B, H, dh, gated, dtype, g):
    """q, k, v, gate logits as column slices of one [B, 3 H dh (+ H)] row block, like the fused GEMM's output."""
    d = H * dh
    y = (torch.randn(B, 3 * d + (H if gated else 0), generator=g) * 2).to("cuda", dtype)
    q, k, v = (y[:, i * d : (i + 1) * d].unflatten(-1, (H, dh)) for i in range(3))
    return q, k, v, (y[:, 3 * d :] if gated else None)


def prefix_state(B, H, dh, kind, sigma, w, g, steps=16):
    """The fp32 state after `steps` random gated steps (float64): a state the model could reach, so the
    readout's normaliser is a sum of kernel estimates and not an arbitrary, possibly cancelling, value."""
    sigma, w = sigma.double().cpu(), w.double().cpu()
    keys = torch.randn(B, steps, H, dh, generator=g, dtype=torch.float64)
    values = torch.randn(B, steps, H, dh, generator=g, dtype=torch.float64)
    gates = 0.5 + 0.5 * torch.rand(B, steps, H, generator=g, dtype=torch.float64)
    phi = naive_random_features(keys, sigma, w, kind)
    _, state = naive_causal_gated_scan(phi, phi, values, gates, None)
    return state.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("kind, gated", [("gaussian", True), ("arccos", False), ("gaussian", False), ("arccos", True)])
@pytest.mark.parametrize("B, H, dh, D", [(3, 2, 64, 64), (5, 4, 32, 16), (2, 3, 128, 64), (1, 16, 64, 128), (2, 2, 128, 128)])
def test_kernel_matches_float64_reference(dtype, kind, gated, B, H, dh, D):
    F = 2 * D if kind == "gaussian" else D
    if F > 256:
        pytest.skip("F > 256 is outside the step kernel's sizes (tested as unsupported below)")
    g = torch.Generator().manual_seed(zlib.crc32(f"{kind} {gated} {B} {H} {dh} {D}".encode()))
    q, k, v, logits = projections(B, H, dh, gated, dtype, g)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", dtype)
    w = torch.randn(H, D, dh, generator=g).to("cuda", dtype)
    state = prefix_state(B, H, dh, kind, sigma, w, g).cuda()
    keep = (torch.arange(B) % 3 != 1).to(torch.int64).cuda()  # entry 1 (if any) is a padding step
    assert decode_attention_kernel_supports(q, k, v, logits, sigma, w, kind, state, keep)
    ref_out, ref_state = naive_decode_attention_step(
        *(t.double().cpu() for t in (q, k, v)), None if logits is None else logits.double().cpu(),
        sigma.double().cpu(), w.double().cpu(), kind, state.double().cpu(), keep=keep.cpu(), round_to=dtype)
    before = state.clone()
    out = cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, state, 1e-6, keep)
    assert out.shape == (B, H, dh) and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.double().cpu(), ref_out) <= TOL[dtype]
    assert rel_err(state.double().cpu(), ref_state) <= TOL[dtype]
    if B > 1:
        assert torch.equal(state[1], before[1])  # the padding step left its state exactly as it was


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind, gated", [("gaussian", True), ("arccos", False)])
@pytest.mark.parametrize("B, H, dh, D", [(5, 4, 64, 64), (64, 16, 64, 64), (2, 3, 32, 128)])
def test_step_from_projections_matches_float64_reference(dtype, kind, gated, B, H, dh, D):
    """The step fed the projections the q/k/v GEMM made (proj) instead of q and k: against the float64
    step of the same q, k, v, and within the same tolerance of the step that projects q and k itself."""
    from rfa_export.ops.decode_linear import triton_decode_linear_projected
    from rfa_export.ops.decode_linear.triton_linear import triton

    if triton is None:
        pytest.skip("triton not installed")
    F = 2 * D if kind == "gaussian" else D
    g = torch.Generator().manual_seed(zlib.crc32(f"proj {kind} {gated} {B} {H} {dh} {D}".encode()))
    K, d = 128, H * dh
    x = torch.randn(B, K, generator=g).to("cuda", dtype)
    weight = (torch.randn(3 * d + (H if gated else 0), K, generator=g) / K ** 0.5 * 2).to("cuda", dtype)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", dtype)
    w = torch.randn(H, D, dh, generator=g).to("cuda", dtype)
    y, proj = triton_decode_linear_projected(x, weight, None, sigma, w)
    q, k, v = (y[:, i * d : (i + 1) * d].unflatten(-1, (H, dh)) for i in range(3))
    logits = y[:, 3 * d :] if gated else None
    state = prefix_state(B, H, dh, kind, sigma, w, g).cuda()
    keep = (torch.arange(B) % 3 != 1).to(torch.int64).cuda()
    ref_out, ref_state = naive_decode_attention_step(
        *(t.double().cpu() for t in (q, k, v)), None if logits is None else logits.double().cpu(),
        sigma.double().cpu(), w.double().cpu(), kind, state.double().cpu(), keep=keep.cpu(), round_to=dtype)
    own_state = state.clone()
    own_out = cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, own_state, 1e-6, keep)
    before = state.clone()
    out = cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, state, 1e-6, keep, proj=proj)
    assert torch.isfinite(out).all() and state.shape == (B, H, F, dh + 1)
    for got, own, ref in ((out, own_out, ref_out), (state, own_state, ref_state)):
        assert rel_err(got.double().cpu(), ref) <= TOL[dtype]
        assert rel_err(got.double().cpu(), own.double().cpu()) <= TOL[dtype]
    assert torch.equal(state[1], before[1])
    with pytest.raises(ValueError, match="proj must be"):
        cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, state, 1e-6, keep, proj=proj[:, :, :1])


def test_half_precision_model_steps_from_projections(monkeypatch):
    """A bf16 model decodes with its q/k/v GEMM projecting q and k for the step kernel: one projecting GEMM
    per layer and step, and the same logits and states, within bf16 rounding, as steps where the step
    kernel projects q and k itself, and as the float64 model."""
    import rfa_export.ops.decode_linear.op as linear_layers
    from rfa_export.ops.decode_linear.triton_linear import triton

    if triton is None:
        pytest.skip("triton not installed")
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=256, n_heads=4, n_layers=2, d_ffn=512, num_features=64, gated=True,
                    positional="none")
    model = RFALanguageModel(cfg).eval()
    ids, more = torch.randint(0, 300, (5, 12)), torch.randint(0, 300, (5, 3))
    with torch.no_grad():
        ref, _ = model.double()(torch.cat([ids, more], 1))
        cuda = model.to("cuda", torch.bfloat16)
        _, prefix = cuda(ids.cuda())
    calls = []
    real = linear_layers.triton_decode_linear_projected
    monkeypatch.setattr(linear_layers, "triton_decode_linear_projected", lambda *a: calls.append(1) or real(*a))

    def decode(state):
        logits = []
        with torch.no_grad():
            for t in range(more.shape[1]):
                out, _ = cuda.step(more[:, t].cuda(), state, torch.full((5,), 12 + t, device="cuda"), inplace_state=True)
                logits.append(out.double().cpu())
        return torch.stack(logits, 1), state

    logits, state = decode([s.clone() for s in prefix])
    assert len(calls) == more.shape[1] * cfg.n_layers
    monkeypatch.setattr(linear_layers, "decode_linear_projection_parts", lambda *a: 0)
    own_logits, own_state = decode([s.clone() for s in prefix])
    assert len(calls) == more.shape[1] * cfg.n_layers
    assert rel_err(logits, own_logits) <= 1e-2 and rel_err(logits, ref[:, 12:]) <= 5e-2
    for s, o in zip(state, own_state):
        assert rel_err(s.double().cpu(), o.double().cpu()) <= 1e-2


def test_misaligned_random_matrix():
    """W~ at an address that is not 16-byte aligned takes the plain-load staging path."""
    g = torch.Generator().manual_seed(1)
    q, k, v, logits = projections(2, 2, 64, True, torch.bfloat16, g)
    sigma = (torch.rand(2, 64, generator=g) + 0.5).to("cuda", torch.bfloat16)
    w = torch.randn(2, 64, 64, generator=g).to("cuda", torch.bfloat16)
    shifted = torch.empty(w.numel() + 1, dtype=w.dtype, device="cuda")[1:].view_as(w)
    shifted.copy_(w)
    assert shifted.data_ptr() % 16 != 0
    state = prefix_state(2, 2, 64, "gaussian", sigma, w, g).cuda()
    ref_state = state.clone()
    out = cuda_decode_attention_step_(q, k, v, logits, sigma, shifted, "gaussian", state, 1e-6)
    ref = cuda_decode_attention_step_(q, k, v, logits, sigma, w, "gaussian", ref_state, 1e-6)
    assert torch.equal(out, ref) and torch.equal(state, ref_state)


def test_unsupported_inputs_are_refused():
    g = torch.Generator().manual_seed(0)
    q, k, v, logits = projections(2, 2, 64, True, torch.float32, g)
    sigma, w = torch.ones(2, 64, device="cuda"), torch.randn(2, 64, 64, device="cuda")
    state = torch.zeros(2, 2, 128, 65, device="cuda")
    assert decode_attention_kernel_supports(q, k, v, logits, sigma, w, "gaussian", state)
    assert not decode_attention_kernel_supports(q, k, v, logits, sigma, w, "arccos", state)  # F = 64: wrong state
    assert not decode_attention_kernel_supports(q, k, v, logits, sigma.half(), w, "gaussian", state)
    assert not decode_attention_kernel_supports(q, k, v, logits, sigma, w, "gaussian", state.double())
    assert not decode_attention_kernel_supports(q.contiguous().transpose(1, 2).contiguous().transpose(1, 2), k, v,
                                                logits, sigma, w, "gaussian", state)  # head-major strides
    big = torch.randn(2, 200, 64, device="cuda")  # D = 200: F = 400 > 256
    assert not decode_attention_kernel_supports(q, k, v, logits, sigma, big, "gaussian", torch.zeros(2, 2, 400, 65, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind, gated", [("gaussian", True), ("arccos", False)])
@pytest.mark.parametrize("B, H, dh, D", [(3, 2, 64, 64), (64, 16, 64, 64), (2, 3, 128, 64)])
def test_bf16_state_matches_float64_reference(dtype, kind, gated, B, H, dh, D):
    """The fused step on a bf16 state: read widened, updated in fp32, rounded to nearest once."""
    g = torch.Generator().manual_seed(zlib.crc32(f"bf16 state {kind} {gated} {B} {H} {dh} {D}".encode()))
    q, k, v, logits = projections(B, H, dh, gated, dtype, g)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", dtype)
    w = torch.randn(H, D, dh, generator=g).to("cuda", dtype)
    state = prefix_state(B, H, dh, kind, sigma, w, g).to("cuda", torch.bfloat16)
    keep = (torch.arange(B) % 3 != 1).to(torch.int64).cuda()
    assert decode_attention_kernel_supports(q, k, v, logits, sigma, w, kind, state, keep)
    ref_out, ref_state = naive_decode_attention_step(
        *(t.double().cpu() for t in (q, k, v)), None if logits is None else logits.double().cpu(),
        sigma.double().cpu(), w.double().cpu(), kind, state.double().cpu(), keep=keep.cpu(), round_to=dtype)
    before = state.clone()
    for overlap in (False, True):
        state.copy_(before)
        out = cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, state, 1e-6, keep, overlap_state_load=overlap)
        assert state.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert rel_err(out.double().cpu(), ref_out) <= TOL[dtype]
        assert rel_err(state.double().cpu(), ref_state) <= max(TOL[dtype], 2.0**-7)
        assert torch.equal(state[1], before[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind, gated", [("gaussian", True), ("arccos", False)])
@pytest.mark.parametrize("B, H, dh, D", [(3, 2, 64, 64), (64, 16, 64, 64), (2, 3, 128, 64), (4, 2, 16, 128)])
def test_int8_state_matches_float64_reference(dtype, kind, gated, B, H, dh, D):
    """The fused step on an int8-row state [B, H, F, dh + 2]: each row widened, updated in fp32 and stored with
    its least exponent, codes rounded to nearest (docs/op_contract.md). Every entry within half its row's code
    step of the float64 step from the same widened state, plus the features' error (fp32's, or the bf16
    rounding of a feature that lands on the other side of a tie); the readout to the dtype's tolerance;
    a padding entry's bytes unchanged; features mapped here, from the GEMM's projections, launched early."""
    from rfa_export.ops.causal_gated_scan.state_storage import narrow_state, widen_state
    from rfa_export.ops.decode_linear import decode_linear_projection_parts, triton_decode_linear_projected
    from rfa_export.ops.decode_linear.triton_linear import triton

    g = torch.Generator().manual_seed(zlib.crc32(f"int8 state {kind} {gated} {B} {H} {dh} {D}".encode()))
    q, k, v, logits = projections(B, H, dh, gated, dtype, g)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", dtype)
    w = torch.randn(H, D, dh, generator=g).to("cuda", dtype)
    s8 = narrow_state(prefix_state(B, H, dh, kind, sigma, w, g).double(), torch.int8).cuda()
    keep = (torch.arange(B) % 3 != 1).to(torch.int64).cuda()
    assert decode_attention_kernel_supports(q, k, v, logits, sigma, w, kind, s8, keep)
    assert not decode_attention_kernel_supports(q, k, v, logits, sigma, w, kind, s8[..., :-1].contiguous(), keep)

    def reference(q, k, v, logits, feature_err):
        """float64 out and state from the widened s8, each row's half code step, and the features' error."""
        out, state = naive_decode_attention_step(
            *(t.double().cpu() for t in (q, k, v)), None if logits is None else logits.double().cpu(),
            sigma.double().cpu(), w.double().cpu(), kind, widen_state(s8.cpu(), dh, torch.float64), keep=keep.cpu(),
            round_to=dtype)
        half_step = torch.exp2(narrow_state(state, torch.int8)[..., -1:].double()) / 2
        return out, state, half_step, feature_err * state.abs().amax(-1, keepdim=True)

    ref_out, ref_state, half_step, features = reference(q, k, v, logits, 1e-5 if dtype == torch.float32 else 1e-2)
    runs = [dict(), dict(overlap_state_load=True)]
    if triton is not None and dtype != torch.float32:  # the projecting GEMM serves half-precision layers
        x = torch.randn(B, 128, generator=g).to("cuda", dtype)
        weight = (torch.randn(3 * H * dh + (H if gated else 0), 128, generator=g) / 128 ** 0.5).to("cuda", dtype)
        if decode_linear_projection_parts(x, weight, sigma, w):
            y, proj = triton_decode_linear_projected(x, weight, None, sigma, w)
            runs.append(dict(proj=proj))
    for run in runs:
        state = s8.clone()
        if "proj" in run:  # q, k, v and the gate from that GEMM, and a reference of the same
            d = H * dh
            q, k, v = (y[:, i * d : (i + 1) * d].unflatten(-1, (H, dh)) for i in range(3))
            logits = y[:, 3 * d :] if gated else None
            ref_out, ref_state, half_step, features = reference(q, k, v, logits, 1e-2)
        out = cuda_decode_attention_step_(q, k, v, logits, sigma, w, kind, state, 1e-6, keep, **run)
        assert state.dtype == torch.int8 and torch.isfinite(out).all()
        assert rel_err(out.double().cpu(), ref_out) <= TOL[dtype]
        stored = state.cpu()
        assert int(stored[..., :-1].abs().max()) <= 127
        err = (widen_state(stored, dh, torch.float64) - ref_state).abs()
        assert bool((err <= half_step * (1 + 1e-3) + features).all())
        want = narrow_state(ref_state, torch.int8)[..., -1]  # the least exponents (a tie may move a row by one)
        assert int((stored[..., -1].int() - want.int()).abs().max()) <= 1
        if B > 1:
            assert torch.equal(state[1], s8[1])  # the padding step stored back the very bytes it read


def test_model_with_a_bf16_state_decodes_on_cuda():
    """state_dtype bfloat16: the CUDA step (fused kernel) equals the CPU model's step, both rounding the
    state to bf16 after every token."""
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=128, n_heads=2, n_layers=2, d_ffn=256, num_features=64, gated=True,
                    positional="none", state_dtype="bfloat16")
    model = RFALanguageModel(cfg).eval()
    ids = torch.randint(0, 300, (3, 24))
    with torch.no_grad():
        cpu_state = model.initial_state(3)
        cuda = RFALanguageModel(cfg).eval()
        cuda.load_state_dict(model.state_dict())
        cuda = cuda.cuda()
        state = cuda.initial_state(3, device="cuda")
        for t in range(24):
            ref, cpu_state = model.step(ids[:, t], cpu_state, torch.full((3,), t))
            logits, _ = cuda.step(ids[:, t].cuda(), state, torch.full((3,), t, device="cuda"), inplace_state=True)
            assert rel_err(logits.cpu(), ref) <= 5e-3
    assert all(s.dtype == torch.bfloat16 for s in state)
    assert max(rel_err(s.cpu(), r) for s, r in zip(state, cpu_state)) <= 2.0**-7


def test_model_decodes_through_the_fused_step(monkeypatch):
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=128, n_heads=2, n_layers=2, d_ffn=256, num_features=64, gated=True,
                    positional="none")
    model = RFALanguageModel(cfg).eval()
    ids = torch.randint(0, 300, (3, 20))
    more = torch.randint(0, 300, (3, 4))
    with torch.no_grad():
        ref, _ = model(torch.cat([ids, more], 1))  # CPU, the whole sequence at once
        cuda = model.cuda()
        _, state = cuda(ids.cuda())
        import rfa_export.ops.decode_attention.op as attention

        calls = []
        real = attention.cuda_decode_attention_step_
        monkeypatch.setattr(attention, "cuda_decode_attention_step_", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        for t in range(4):
            logits, _ = cuda.step(more[:, t].cuda(), state, torch.full((3,), 20 + t, device="cuda"), inplace_state=True)
            assert rel_err(logits.cpu(), ref[:, 20 + t]) <= 1e-4
    assert len(calls) == 4 * cfg.n_layers
    # a padding step (attention_mask 0) through the fused step leaves that sequence's state as it was
    with torch.no_grad():
        token, pos, mask = more[:, 0], torch.full((3, 1), 24), torch.tensor([[1], [0], [1]])
        cpu_state = [s.cpu() for s in state]
        ref_logits, ref_state = model.cpu()(token[:, None], cpu_state, pos, mask)
        cuda = model.cuda()
        logits, _ = cuda(token[:, None].cuda(), state, pos.cuda(), mask.cuda(), inplace_state=True)
    assert len(calls) == 5 * cfg.n_layers
    assert rel_err(logits.cpu(), ref_logits) <= 1e-4
    for s, r, before in zip(state, ref_state, cpu_state):
        assert rel_err(s.cpu(), r) <= 1e-4
        assert torch.equal(s[1].cpu(), before[1])


def _project_and_step(x, weight, sigma, w, state, overlap):
    """The q/k/v projection (Triton; it writes q, k, v and the gate) and then the decode step on `state`, over
    freed NaN buffers: the kernels' outputs are likely to land on NaN, so a read before a write shows."""
    from rfa_export.ops.decode_linear import triton_decode_linear

    H, _, dh = w.shape
    poison = torch.full((4, *x.shape[:-1], weight.shape[0]), float("nan"), device="cuda", dtype=torch.bfloat16)
    del poison
    torch.cuda.synchronize()
    proj = triton_decode_linear(x, weight, None)
    d = H * dh
    q, k, v = (proj[:, i * d : (i + 1) * d].unflatten(-1, (H, dh)) for i in range(3))
    return cuda_decode_attention_step_(q, k, v, proj[:, 3 * d :], sigma, w, "gaussian", state, 1e-6,
                                       overlap_state_load=overlap)


def _projection_case(B, seed, state_dtype=torch.float32):
    """H 16 heads of dh 64 (D 64, gaussian) behind a d_model 1024 q/k/v/gate projection, bf16: (sigma, w_tilde,
    x [B, 1024], the projection's weight, a state after a prefix)."""
    g = torch.Generator().manual_seed(seed)
    H, dh, D = 16, 64, 64
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", torch.bfloat16)
    w = torch.randn(H, D, dh, generator=g).to("cuda", torch.bfloat16)
    x = torch.randn(B, 1024, generator=g).to("cuda", torch.bfloat16)
    weight = (torch.randn(3 * H * dh + H, 1024, generator=g) / 32).to("cuda", torch.bfloat16)
    return sigma, w, x, weight, prefix_state(B, H, dh, "gaussian", sigma, w, g).to("cuda", state_dtype)


def test_overlapped_state_load_waits_for_the_projection():
    """overlap_state_load lets the step start while the projection that makes q, k, v and the gate is still
    running (a programmatic dependent launch after the Triton projection, which lets its successor start
    early): it must read them only after that kernel, so the result equals the serial launch's exactly."""
    from rfa_export.ops.decode_linear.triton_linear import triton

    if triton is None:
        pytest.skip("triton not installed")
    sigma, w, x, weight, state0 = _projection_case(64, 7)

    def step(overlap):
        state = state0.clone()
        return _project_and_step(x, weight, sigma, w, state, overlap), state

    serial_out, serial_state = step(False)
    assert torch.isfinite(serial_out).all()
    for _ in range(5):
        out, state = step(True)
        assert torch.equal(out, serial_out) and torch.equal(state, serial_state)


@pytest.mark.parametrize("B", [1, 64], ids=["one_wave", "several_waves"])
def test_step_letting_the_next_kernel_start_early_is_still_waited_for(B, monkeypatch):
    """NEXT_KERNEL_AT_START: a step of at most one block per multiprocessor (B * H) lets the next kernel launch
    at its start. That kernel, the output projection, reads the step's output only after its wait, so the chain
    projection -> step -> projection (every one launched early) equals the serial one exactly; at B64 the step
    keeps its late trigger, and the same holds."""
    import rfa_export.ops.decode_attention.cuda as decode_attention_cuda
    import rfa_export.ops.decode_linear.triton_linear as triton_linear
    from rfa_export.ops.decode_linear import triton_decode_linear

    if triton_linear.triton is None:
        pytest.skip("triton not installed")
    g = torch.Generator().manual_seed(8)
    H, dh, D = 16, 64, 64
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", torch.bfloat16)
    w = torch.randn(H, D, dh, generator=g).to("cuda", torch.bfloat16)
    weight = (torch.randn(3 * H * dh + H, 1024, generator=g) / 32).to("cuda", torch.bfloat16)
    w_out = (torch.randn(1024, H * dh, generator=g) / 32).to("cuda", torch.bfloat16)
    state0 = prefix_state(B, H, dh, "gaussian", sigma, w, g).cuda()
    inputs = [torch.randn(B, 1024, generator=g).to("cuda", torch.bfloat16) for _ in range(3)]

    def chain(x, early):
        monkeypatch.setattr(triton_linear, "USE_PDL", early)
        monkeypatch.setattr(triton_linear, "STRIP_TRIGGERS_BEFORE_WAIT", early)
        monkeypatch.setattr(decode_attention_cuda, "NEXT_KERNEL_AT_START", early)
        state = state0.clone()
        out = _project_and_step(x, weight, sigma, w, state, early)
        y = triton_decode_linear(out.flatten(1), w_out, None)
        torch.cuda.synchronize()
        return y, state

    for x in inputs:
        serial_y, serial_state = chain(x, False)
        assert torch.isfinite(serial_y).all()
        for _ in range(3):
            y, state = chain(x, True)
            assert torch.equal(y, serial_y) and torch.equal(state, serial_state)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32_state", "bf16_state"])
def test_step_timeline_stamps_every_phase_in_order_and_changes_nothing(state_dtype, monkeypatch):
    """decode_attention.cuda.TIMELINE (profiling): each launch with overlap_state_load writes its slot, every
    block's cycle stamps rise phase by phase within its global-timer span, and the outputs and state are those
    of the same step without a timeline, bit for bit."""
    import rfa_export.ops.decode_attention.cuda as decode_attention_cuda
    from rfa_export.ops.decode_linear.triton_linear import triton

    if triton is None:
        pytest.skip("triton not installed")
    B, H = 1, 16
    sigma, w, x, weight, state0 = _projection_case(B, 11, state_dtype)
    plain_state = state0.clone()
    plain = _project_and_step(x, weight, sigma, w, plain_state, True)
    timeline = decode_attention_cuda.StepTimeline(2, B * H, "cuda")
    monkeypatch.setattr(decode_attention_cuda, "TIMELINE", timeline)
    states = [state0.clone(), state0.clone(), state0.clone()]
    outs = [_project_and_step(x, weight, sigma, w, s, True) for s in states]  # the third overwrites slot 0
    _project_and_step(x, weight, sigma, w, state0.clone(), False)  # not overlapped: no slot taken
    torch.cuda.synchronize()
    assert timeline.calls == 3
    for out, state in zip(outs, states):
        assert torch.equal(out, plain) and torch.equal(state, plain_state)
    stamps = timeline.stamps.cpu()
    cycles = stamps[..., 1:8]
    assert (cycles > 0).all() and (cycles[..., 1:] >= cycles[..., :-1]).all()
    assert (stamps[..., 8] >= stamps[..., 0]).all() and (stamps[..., 0] > 0).all()
    assert (stamps[..., 9:] == 0).all()
