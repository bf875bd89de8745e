"""The fused decode step's reference (ops/lm_decode_step/naive.py) is the model's own step, in float64."""

import pytest
import torch

from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.ops.lm_decode_step import naive_lm_decode_step


@pytest.mark.parametrize("gated, feature_map, positional, tied", [(True, "gaussian", "sinusoidal", False),
                                                                  (False, "arccos", "none", True)])
def test_reference_equals_the_model_step(gated, feature_map, positional, tied):
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=97, d_model=64, n_heads=2, n_layers=2, d_ffn=96, num_features=8, gated=gated,
                    feature_map=feature_map, positional=positional, tie_embeddings=tied)
    model = RFALanguageModel(cfg).eval().double()
    states = model.initial_state(1)
    states = [s.double() for s in states]
    ref_states = [s.clone() for s in states]
    with torch.no_grad():
        for t, tok in enumerate([5, 90, 0, 41, 41, 7]):
            token, position = torch.tensor([tok]), torch.tensor([t + 3])
            want, ref_states = model.step(token, ref_states, position)
            got, states = naive_lm_decode_step(model.step_weights(), token, position, states)
            assert torch.allclose(got, want, rtol=0, atol=1e-12 * want.abs().max().item())
            for s, r in zip(states, ref_states):
                assert torch.allclose(s, r, rtol=0, atol=1e-12)


def test_step_writes_the_greedy_token():
    torch.manual_seed(0)
    model = RFALanguageModel(RFAConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=1, d_ffn=64, num_features=4)).eval()
    token = torch.tensor([3])
    with torch.no_grad():
        logits, _ = model.step(token, model.initial_state(1), torch.tensor([0]), next_token=token)
    assert token.item() == logits.argmax(-1).item()
