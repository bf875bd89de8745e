"""The fused batch-1 decode step of a whole model (one persistent kernel) against the float64 reference, and
the model's use of it."""

import dataclasses

import pytest
import torch

from helpers import rel_err
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.ops.lm_decode_step import cuda_lm_decode_step_, lm_step_kernel_supports, naive_lm_decode_step

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]

CONFIGS = {
    # d_ffn 1024 = 4 x 256 (one segment per row); dh 64; sinusoidal positions; gated gaussian
    "gated-gaussian-bf16": (dict(vocab_size=1000, d_model=256, n_heads=4, n_layers=3, d_ffn=1024, num_features=32,
                                 gated=True, feature_map="gaussian", positional="sinusoidal"), torch.bfloat16),
    # d_ffn 768 (three chunks a lane), dh 32, ungated arc-cosine, tied embeddings, fp16
    "ungated-arccos-fp16": (dict(vocab_size=333, d_model=512, n_heads=16, n_layers=2, d_ffn=768, num_features=16,
                                 gated=False, feature_map="arccos", positional="none", tie_embeddings=True),
                            torch.float16),
    # the benchmark's widths: FFN2's rows in four segments, dh 128 here, vocab 32000
    "vocab32000-bf16": (dict(vocab_size=32000, d_model=1024, n_heads=8, n_layers=2, d_ffn=4096, num_features=64,
                       gated=True, feature_map="gaussian", positional="none"), torch.bfloat16),
}
LOGIT_TOL = {torch.bfloat16: 8e-3, torch.float16: 1e-3}  # the logits are rounded to the model's dtype


def model_and_prefix(name, prefix=12):
    """The model on CUDA in its dtype, its float64 copy, and states after `prefix` tokens (float64 reference)."""
    cfg, dtype = CONFIGS[name]
    torch.manual_seed(0)
    model = RFALanguageModel(RFAConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking gates and sigmas rather than the initial constants
            p.add_(torch.randn_like(p) * 0.02)
    model = model.to("cuda", dtype)
    ref = RFALanguageModel(RFAConfig(**cfg)).eval().double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref = ref.cuda()
    g = torch.Generator().manual_seed(1)
    states = ref.initial_state(1, "cuda")
    states = [s.double() for s in states]
    with torch.no_grad():
        for t in range(prefix):
            token = torch.randint(0, cfg["vocab_size"], (1,), generator=g).cuda()
            _, states = naive_lm_decode_step(ref.step_weights(), token, torch.tensor([t], device="cuda"), states)
    return model, ref, states


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_matches_float64_reference(name):
    model, ref, ref_states = model_and_prefix(name)
    dtype = CONFIGS[name][1]
    weights, ref_weights = model.step_weights(), ref.step_weights()
    states = [s.float() for s in ref_states]
    token = torch.tensor([7], device="cuda")
    next_token = torch.empty_like(token)
    with torch.no_grad():
        for t in range(12, 32):  # greedy: the kernel's argmax feeds both
            position = torch.tensor([t], device="cuda")
            assert lm_step_kernel_supports(weights, token, position, states)
            logits = cuda_lm_decode_step_(weights, token, position, states, next_token)
            want, ref_states = naive_lm_decode_step(ref_weights, token, position, ref_states)
            assert logits.dtype == dtype and logits.shape == want.shape
            assert rel_err(logits, want) <= LOGIT_TOL[dtype], t
            for s, r in zip(states, ref_states):
                assert rel_err(s, r) <= 1e-4, t
            assert next_token.item() == logits.float().argmax().item()  # the first of ties, as torch
            token = next_token.clone()


def test_model_step_takes_the_kernel_and_replays_in_a_graph(monkeypatch):
    monkeypatch.setenv("RFA_LM_STEP_KERNEL", "1")
    model, ref, ref_states = model_and_prefix("gated-gaussian-bf16")
    states = [s.float() for s in ref_states]
    token, position = torch.tensor([3], device="cuda"), torch.tensor([12], device="cuda")
    with torch.no_grad():
        logits, _ = model.step(token, states, position, inplace_state=True, next_token=token)  # token <- argmax
        want, ref_states = naive_lm_decode_step(ref.step_weights(), torch.tensor([3], device="cuda"), position, ref_states)
        assert rel_err(logits, want) <= LOGIT_TOL[torch.bfloat16]
        assert token.item() == logits.float().argmax().item()
        # captured once, replayed: the next steps at positions 13, 14, 15
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out, _ = model.step(token, states, position, inplace_state=True, next_token=token)
        for t in range(13, 16):
            fed = token.clone()
            position.fill_(t)
            graph.replay()
            want, ref_states = naive_lm_decode_step(ref.step_weights(), fed, position, ref_states)
            assert rel_err(out, want) <= LOGIT_TOL[torch.bfloat16]
            for s, r in zip(states, ref_states):
                assert rel_err(s, r) <= 1e-4


def test_token_outside_the_vocabulary_changes_nothing():
    model, _, ref_states = model_and_prefix("gated-gaussian-bf16", prefix=4)
    states = [s.float() for s in ref_states]
    before = [s.clone() for s in states]
    token = torch.tensor([1000], device="cuda")
    with torch.no_grad():
        logits = cuda_lm_decode_step_(model.step_weights(), token, torch.tensor([4], device="cuda"), states, token)
    assert token.item() == -1 and torch.isnan(logits).all()
    assert all(torch.equal(s, b) for s, b in zip(states, before))


def test_models_the_kernel_does_not_take_fall_back():
    model, _, ref_states = model_and_prefix("gated-gaussian-bf16", prefix=2)
    token, position = torch.tensor([3], device="cuda"), torch.tensor([2], device="cuda")
    fp32 = model.float()
    states = [s.float() for s in ref_states]
    assert not lm_step_kernel_supports(fp32.step_weights(), token, position, states)  # fp32 weights
    with torch.no_grad():
        logits, _ = fp32.step(token, states, position, inplace_state=True)  # the layer-by-layer path
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    bf16 = model.bfloat16()
    assert not lm_step_kernel_supports(bf16.step_weights(), token.int(), position, states)  # int32 token
    assert not lm_step_kernel_supports(bf16.step_weights(), token, position, states[:-1])  # a state missing


def test_lm_head_bias():
    """The LM head's bias (none of the bundled models has one) reaches the logits and their argmax."""
    model, ref, ref_states = model_and_prefix("gated-gaussian-bf16", prefix=3)
    weights, ref_weights = model.step_weights(), ref.step_weights()
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(weights.lm_head_weight.shape[0], generator=g, dtype=torch.float64).cuda()
    weights = dataclasses.replace(weights, lm_head_bias=bias.to(weights.lm_head_weight.dtype))
    ref_weights = dataclasses.replace(ref_weights, lm_head_bias=bias.to(weights.lm_head_weight.dtype).double())
    states = [s.float() for s in ref_states]
    token, position = torch.tensor([5], device="cuda"), torch.tensor([3], device="cuda")
    next_token = torch.empty_like(token)
    with torch.no_grad():
        logits = cuda_lm_decode_step_(weights, token, position, states, next_token)
        want, _ = naive_lm_decode_step(ref_weights, token, position, ref_states)
        unbiased, _ = naive_lm_decode_step(ref.step_weights(), token, position, ref_states)
    assert rel_err(logits, want) <= LOGIT_TOL[torch.bfloat16]
    assert rel_err(logits, unbiased) > 10 * LOGIT_TOL[torch.bfloat16]  # the bias is not negligible
    assert next_token.item() == logits.float().argmax().item()
