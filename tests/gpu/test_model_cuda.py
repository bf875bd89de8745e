"""The model's CUDA inference path (fused q/k/v/gate projection, fused random features, step kernel)
against the same model on the CPU."""

import copy

import pytest
import torch

from helpers import rel_err
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.ops.causal_gated_scan.state_storage import widen_state

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]


def small_model(gated: bool, feature_map: str = "gaussian") -> RFALanguageModel:
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=128, n_heads=2, n_layers=2, d_ffn=256, num_features=64, gated=gated,
                    feature_map=feature_map, positional="none")
    return RFALanguageModel(cfg).eval()


@pytest.mark.parametrize("gated, feature_map", [(True, "gaussian"), (False, "arccos")])
def test_forward_and_steps_match_cpu(gated, feature_map):
    model = small_model(gated, feature_map)
    ids = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        ref, ref_state = model(ids)
        cuda = model.cuda()
        out, state = cuda(ids.cuda())
        assert rel_err(out.cpu(), ref) <= 1e-4
        for s, r in zip(state, ref_state):
            assert rel_err(s.cpu(), r) <= 1e-4
        # then step by step with the state updated in place, against the CPU forward over the whole sequence
        more = torch.randint(0, 300, (3, 5))
        ref_more, _ = model.cpu()(torch.cat([ids, more], 1))
        cuda = model.cuda()
        for t in range(5):
            logits, _ = cuda.step(more[:, t].cuda(), state, torch.full((3,), 40 + t, device="cuda"), inplace_state=True)
            assert rel_err(logits.cpu(), ref_more[:, 40 + t]) <= 1e-4


# what two states rounded apart may differ by, relative: one bf16 ulp, one int8 code step of a row's largest entry
REDUCED_STATE_STEP = {"bfloat16": 2.0**-7, "int8": 2 / 127}


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_reduced_state_prefill_and_steps_match_float64(state_dtype, monkeypatch):
    """A gated model storing its state in bf16 or int8 rows, on CUDA: the prefill (an int8 state widened in the
    scan's workspace around the chunked kernel, narrowed once) and then steps in place (the fused decode step,
    one launch per layer for either format), against the same calls in float64 on the CPU (the contract's torch
    reference)."""
    import rfa_export.ops.decode_attention.op as attention

    fused = []
    real = attention.cuda_decode_attention_step_
    monkeypatch.setattr(attention, "cuda_decode_attention_step_", lambda *a, **kw: fused.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=300, d_model=128, n_heads=2, n_layers=2, d_ffn=256, num_features=64, gated=True,
                    positional="none", state_dtype=state_dtype)
    model = RFALanguageModel(cfg).eval()
    ref_model = copy.deepcopy(model).double()
    ids, more = torch.randint(0, 300, (3, 40)), torch.randint(0, 300, (3, 6))
    with torch.no_grad():
        ref, ref_state = ref_model(ids)
        ref_steps = []
        for t in range(6):
            logits, ref_state = ref_model.step(more[:, t], ref_state, torch.full((3,), 40 + t))
            ref_steps.append(logits)
        cuda = model.cuda()
        out, state = cuda(ids.cuda())
        assert all(s.dtype == getattr(torch, state_dtype) and s.is_cuda for s in state)
        assert rel_err(out.cpu(), ref) <= 2e-3
        steps = [cuda.step(more[:, t].cuda(), state, torch.full((3,), 40 + t, device="cuda"), inplace_state=True)[0]
                 for t in range(6)]
    assert rel_err(torch.stack(steps, 1).cpu(), torch.stack(ref_steps, 1)) <= 2e-3
    assert len(fused) == 6 * cfg.n_layers
    Dv = cfg.d_model // cfg.n_heads
    for s, r in zip(state, ref_state):
        got, want = widen_state(s.cpu(), Dv, torch.float64), widen_state(r, Dv, torch.float64)
        assert rel_err(got, want) <= REDUCED_STATE_STEP[state_dtype]


def test_fused_projection_follows_weight_updates():
    model = small_model(True).cuda()
    ids = torch.randint(0, 300, (2, 7), device="cuda")
    with torch.no_grad():
        before, _ = model(ids)
        attn = model.blocks[0].attn
        attn.q_proj.weight.mul_(0.5)  # in place: same storage, new version
        attn.gate.bias.add_(1.0)
        after, _ = model(ids)
    ref, _ = model(ids)  # autograd on: the plain per-projection path
    assert rel_err(before, ref.detach()) > 1e-3
    assert rel_err(after, ref.detach()) <= 1e-4
