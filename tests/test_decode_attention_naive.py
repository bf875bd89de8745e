"""The reference decode step (features + gate + scan step) is exactly what the attention layer computes for
one step, on the CPU in float64: the fused kernel's tests lean on it."""

import pytest
import torch

from rfa_export.model.attention import CausalRFASelfAttention
from rfa_export.ops.decode_attention import naive_decode_attention_step


@pytest.mark.parametrize("gated, kind", [(True, "gaussian"), (False, "arccos")])
def test_reference_equals_attention_layer_step(gated, kind):
    torch.manual_seed(0)
    layer = CausalRFASelfAttention(48, 3, feature_map=kind, num_features=16, gated=gated).double().eval()
    F = layer.phi.feature_size
    x = torch.randn(4, 1, 48, dtype=torch.float64)
    state = torch.rand(4, 3, F, 17, dtype=torch.float64)
    mask = torch.tensor([[1], [0], [1], [1]])
    with torch.no_grad():
        y, layer_state = layer(x, state.clone(), mask)
        proj = lambda lin: lin(x[:, 0]).unflatten(-1, (3, 16))  # noqa: E731
        out, ref_state = naive_decode_attention_step(
            proj(layer.q_proj), proj(layer.k_proj), proj(layer.v_proj), layer.gate(x[:, 0]) if gated else None,
            layer.phi.sigma, layer.phi.w_tilde, kind, state, layer.eps, keep=mask[:, 0])
        ref_y = layer.merge(out[:, None])
    assert torch.allclose(y, ref_y, rtol=1e-12, atol=1e-12)
    assert torch.allclose(layer_state, ref_state, rtol=1e-12, atol=1e-12)
    assert torch.equal(ref_state[1], state[1])
