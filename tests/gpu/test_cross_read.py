"""The fused cross-attention read against the float64 reference, and the encoder-decoder decoding through it."""

import pytest
import torch

from helpers import rel_err
from rfa_export.ops.cross_read import cross_read_kernel_supports, cuda_cross_read, naive_cross_read
from rfa_export.ops.random_features import naive_random_features

pytestmark = pytest.mark.gpu


def inputs(N, T, H, dh, D, Bs, kind, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(N, T, H, dh, device="cuda", generator=g).to(dtype)
    sigma = (torch.rand(H, dh, device="cuda", generator=g) + 0.5).to(dtype)
    w = torch.randn(H, D, dh, device="cuda", generator=g).to(dtype)
    # the state of real keys and values over 11 source positions, as RFAAttention.memory_state builds it
    k = torch.randn(Bs, 11, H, dh, device="cuda", generator=g, dtype=torch.float64)
    v = torch.randn(Bs, 11, H, dh, device="cuda", generator=g, dtype=torch.float64)
    phi = naive_random_features(k, sigma.double(), w.double(), kind)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    state = torch.einsum("bshf,bshd->bhfd", phi, v1).float().contiguous()
    return q, sigma, w, state


@pytest.mark.parametrize("kind", ["gaussian", "arccos"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("N, T, Bs", [(1, 1, 1), (8, 1, 2), (64, 1, 16), (6, 3, 3)])
@pytest.mark.parametrize("dh, D", [(64, 64), (32, 16), (128, 128)])
def test_kernel_matches_the_float64_reference(kind, dtype, tol, N, T, Bs, dh, D):
    q, sigma, w, state = inputs(N, T, 4, dh, D, Bs, kind, dtype)
    assert cross_read_kernel_supports(q, sigma, w, kind, state, 1e-3)
    got = cuda_cross_read(q, sigma, w, kind, state, 1e-3)
    ref = naive_cross_read(q.double(), sigma.double(), w.double(), kind, state.double(), 1e-3)
    assert rel_err(got, ref) <= tol
    # beams: rows of one source read its state (no copy): each row equals that row with its state alone
    rows = N // Bs
    for b in (0, Bs - 1):
        alone = cuda_cross_read(q[b * rows:(b + 1) * rows], sigma, w, kind, state[b:b + 1].contiguous(), 1e-3)
        assert torch.equal(alone, got[b * rows:(b + 1) * rows])


def test_unsupported_inputs_are_refused():
    q, sigma, w, state = inputs(8, 1, 4, 64, 64, 2, "gaussian", torch.bfloat16)
    three = torch.cat([state, state[:1]]).contiguous()
    assert cross_read_kernel_supports(q[:6], sigma, w, "gaussian", three, 1e-3)
    assert not cross_read_kernel_supports(q, sigma, w, "gaussian", three, 1e-3)  # 3 sources do not divide 8 rows
    assert not cross_read_kernel_supports(q, sigma, w, "arccos", state, 1e-3)  # F = 64 for arccos, state has 128
    assert not cross_read_kernel_supports(q, sigma.float(), w, "gaussian", state, 1e-3)
    assert not cross_read_kernel_supports(q, sigma, w, "gaussian", state.double(), 1e-3)
    assert not cross_read_kernel_supports(q.cpu(), sigma.cpu(), w.cpu(), "gaussian", state.cpu(), 1e-3)
    big = torch.randn(4, 200, 64, device="cuda", dtype=torch.bfloat16)
    assert not cross_read_kernel_supports(q, sigma, big, "gaussian", torch.zeros(2, 4, 400, 65, device="cuda"), 1e-3)


def test_the_decoder_reads_its_cross_states_through_the_kernel(monkeypatch):
    import rfa_export.ops.cross_read.op as op
    from rfa_export.format.config import RFASeq2SeqConfig
    from rfa_export.model.seq2seq import RFASeq2Seq

    torch.manual_seed(0)
    model = RFASeq2Seq(RFASeq2SeqConfig(d_model=128, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ffn=256,
                                        num_features=64)).eval()
    src = torch.randint(0, 256, (2, 9))
    tgt = torch.randint(0, 256, (4, 6))  # two beams per source
    with torch.no_grad():
        _, cross = model.encode(src)
        want, _ = model.decode(tgt, cross)
        gpu = model.cuda().to(torch.bfloat16)
        calls = []
        real = op.cuda_cross_read
        monkeypatch.setattr(op, "cuda_cross_read", lambda *a: calls.append(1) or real(*a))
        got, _ = gpu.decode(tgt.cuda(), [c.cuda() for c in cross])
    assert len(calls) == 2
    assert rel_err(got.float().cpu(), want) <= 3e-2
