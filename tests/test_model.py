"""The RFA model: feature maps, attention layers, and step decoding against the parallel forward."""

import math

import pytest
import torch

from helpers import rel_err
from rfa_export.model import CausalRFASelfAttention, ConfigError, RandomFeatureMap, RFAAttention, RFAConfig, RFALanguageModel
from rfa_export.ops.causal_gated_scan import bounded_readout


def small_config(**kw):
    base = dict(vocab_size=256, d_model=64, n_heads=4, n_layers=2, d_ffn=128, num_features=32)
    base.update(kw)
    return RFAConfig(**base)


# --- feature maps ----------------------------------------------------------------------------------


def unit_pairs(n, d, cos_angle, gen):
    x = torch.randn(n, d, dtype=torch.float64, generator=gen)
    x = x / x.norm(dim=-1, keepdim=True)
    r = torch.randn(n, d, dtype=torch.float64, generator=gen)
    r = r - (r * x).sum(-1, keepdim=True) * x
    r = r / r.norm(dim=-1, keepdim=True)
    y = cos_angle * x + math.sqrt(1 - cos_angle**2) * r
    return x, y


@pytest.mark.parametrize("orthogonal", [False, True])
@torch.no_grad()
def test_gaussian_features_estimate_the_gaussian_kernel(orthogonal):
    gen = torch.Generator().manual_seed(1)
    d, D = 16, 8192
    phi = RandomFeatureMap("gaussian", 1, d, D, orthogonal).double()
    with torch.no_grad():
        phi.sigma.fill_(0.8)
    for c in (0.9, 0.3, -0.5):
        x, y = unit_pairs(64, d, c, gen)
        est = (phi(x[:, None]) * phi(y[:, None] * 3.0)).sum(-1)  # phi normalises its input: scale is ignored
        exact = torch.exp(-0.8**2 * (x - y).pow(2).sum(-1) / 2)
        assert float((est[:, 0] - exact).abs().mean()) < 0.02


@torch.no_grad()
def test_arccos_features_estimate_the_arccos_kernel():
    gen = torch.Generator().manual_seed(2)
    d, D = 16, 8192
    phi = RandomFeatureMap("arccos", 1, d, D, orthogonal=False).double()
    for c in (0.9, 0.0, -0.7):
        x, y = unit_pairs(64, d, c, gen)
        est = (phi(x[:, None]) * phi(y[:, None])).sum(-1)[:, 0]
        theta = math.acos(c)
        exact = (math.sin(theta) + (math.pi - theta) * c) / math.pi
        assert float((est - exact).abs().mean()) < 0.03
        assert (est >= 0).all()


def test_orthogonal_rows_and_resample():
    phi = RandomFeatureMap("gaussian", 2, 8, 20, orthogonal=True)
    w = phi.w_tilde  # [H, D, d]
    block = w[:, :8] / w[:, :8].norm(dim=-1, keepdim=True)
    gram = block @ block.transpose(-1, -2)
    assert torch.allclose(gram, torch.eye(8).expand(2, 8, 8), atol=1e-5)
    assert phi.feature_size == 40
    before = w.clone()
    phi.resample(torch.Generator().manual_seed(5))
    assert not torch.equal(before, phi.w_tilde)
    x = torch.randn(3, 2, 8)
    assert torch.equal(phi(x), phi(x))  # evaluation uses the stored draw


# --- attention layers ------------------------------------------------------------------------------


def test_causal_attention_matches_quadratic_float64():
    layer = CausalRFASelfAttention(32, 4, "gaussian", 16, gated=True).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y, state = layer(x)
    q = layer.phi(layer.heads(layer.q_proj, x))
    k = layer.phi(layer.heads(layer.k_proj, x))
    v = layer.heads(layer.v_proj, x)
    g = torch.sigmoid(layer.gate(x))  # [B, T, H]
    # weight of key i at step t: (1 - g_i) prod_{j=i+1..t} g_j
    logg = torch.log(g).transpose(1, 2)  # [B, H, T]
    cs = torch.cumsum(logg, -1)
    w = torch.exp(cs[..., :, None] - cs[..., None, :]) * (1 - g).transpose(1, 2)[..., None, :]
    w = w * torch.ones(11, 11, dtype=torch.bool).tril()
    scores = torch.einsum("bthf,bshf->bhts", q, k) * w
    num = torch.einsum("bhts,bshd->bthd", scores, v)
    den = scores.sum(-1).transpose(1, 2)
    ref = layer.o_proj(bounded_readout(num, den, layer.eps).flatten(-2))
    assert rel_err(y, ref) <= 1e-10


def test_noncausal_attention_matches_quadratic_float64():
    layer = RFAAttention(32, 4, "arccos", 16).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    mem = torch.randn(2, 9, 32, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.float64)
    mask[1, 6:] = 0
    y = layer(x, mem, mask)
    q = layer.phi(layer.heads(layer.q_proj, x))
    k = layer.phi(layer.heads(layer.k_proj, mem))
    v = layer.heads(layer.v_proj, mem)
    scores = torch.einsum("bthf,bshf->bhts", q, k) * mask[:, None, None, :]
    num = torch.einsum("bhts,bshd->bthd", scores, v)
    den = scores.sum(-1).transpose(1, 2)
    ref = layer.o_proj(bounded_readout(num, den, layer.eps).flatten(-2))
    assert rel_err(y, ref) <= 1e-12
    # masked memory rows have no effect
    mem2 = mem.clone()
    mem2[1, 6:] = 100.0
    assert torch.allclose(layer(x, mem2, mask), y, rtol=0, atol=1e-12)
    # encoder self-attention: memory defaults to x
    assert torch.equal(layer(x), layer(x, x))


# --- the language model ----------------------------------------------------------------------------


def step_all(model, ids, state=None, start=0):
    B, T = ids.shape
    state = model.initial_state(B) if state is None else state
    logits = []
    for t in range(T):
        lo, state = model.step(ids[:, t], state, torch.full((B,), start + t))
        logits.append(lo)
    return torch.stack(logits, 1), state


@pytest.mark.parametrize(
    "kw, T",
    [
        (dict(feature_map="gaussian", gated=True), 2048),
        (dict(feature_map="arccos", gated=False), 2048),
        (dict(feature_map="gaussian", gated=False, orthogonal_features=False), 300),
        (dict(feature_map="arccos", gated=True), 300),
    ],
)
@torch.no_grad()
def test_step_decoding_reproduces_parallel_forward(kw, T):
    model = RFALanguageModel(small_config(**kw)).eval()
    ids = torch.randint(0, 256, (2, T))
    ref, ref_state = model(ids)
    got, state = step_all(model, ids)
    assert rel_err(got, ref) <= 1e-5
    for s, r in zip(state, ref_state):
        assert s.shape == (2, *model.config.state_shape) and s.dtype == torch.float32
        assert rel_err(s, r) <= 1e-5


@torch.no_grad()
def test_prefill_then_continue_equals_one_pass():
    model = RFALanguageModel(small_config()).eval()
    ids = torch.randint(0, 256, (3, 90))
    full, _ = model(ids)
    head, state = model(ids[:, :70])
    pos = torch.arange(70, 90).expand(3, 20)
    tail, _ = model(ids[:, 70:], state, pos)
    assert rel_err(torch.cat([head, tail], 1), full) <= 1e-5


@torch.no_grad()
def test_attention_mask_leaves_state_unchanged():
    for gated in (True, False):
        model = RFALanguageModel(small_config(gated=gated)).eval()
        ids = torch.randint(0, 256, (2, 12))
        _, state = model(ids[:, :8])
        mask = torch.ones(2, 12)
        mask[:, 8:] = 0
        _, masked_state = model(ids, attention_mask=mask)
        for a, b in zip(masked_state, state):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_training_forward_backward_with_dropout():
    model = RFALanguageModel(small_config(dropout=0.1)).train()
    ids = torch.randint(0, 256, (2, 40))
    logits, _ = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.0.attn.gate.weight"].abs().sum() > 0
    assert grads["blocks.0.attn.phi.sigma"].abs().sum() > 0


def test_tied_embeddings():
    model = RFALanguageModel(small_config())
    assert model.lm_head.weight is model.embed.weight
    untied = RFALanguageModel(small_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight


def _outside_attention(model):
    attention = ("attn.", ".qkv.", ".o_proj.")  # the softmax LM block holds its projections itself
    return {k: v for k, v in model.state_dict().items() if not any(a in k for a in attention)}


def test_softmax_baselines_share_the_layout_outside_attention():
    """The decode benchmarks compare models that differ only in attention: each softmax baseline has the RFA
    model's embeddings, LayerNorms, FFNs and LM head (names and shapes), tied the same way; under one seed the
    embeddings, built first, are equal."""
    from rfa_export.baselines import SoftmaxLanguageModel, SoftmaxSeq2Seq
    from rfa_export.format.config import RFASeq2SeqConfig
    from rfa_export.model.seq2seq import RFASeq2Seq

    cases = [(RFALanguageModel, SoftmaxLanguageModel, small_config(positional="sinusoidal", tie_embeddings=tie))
             for tie in (True, False)]
    cases += [(RFASeq2Seq, SoftmaxSeq2Seq, RFASeq2SeqConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=2,
                                                            d_ffn=64, num_features=8, shared_vocab=shared,
                                                            src_vocab_size=300, tgt_vocab_size=200 if not shared else 300,
                                                            bos_token_id=198, eos_token_id=199))
              for shared in (True, False)]
    for rfa_class, softmax_class, config in cases:
        torch.manual_seed(0)
        rfa = rfa_class(config)
        torch.manual_seed(0)
        softmax = softmax_class(config)
        a, b = _outside_attention(rfa), _outside_attention(softmax)
        assert sorted(a) == sorted(b) and len(a) >= 10
        assert all(a[k].shape == b[k].shape for k in a)
        embeds = [n for n in ("embed", "src_embed", "tgt_embed") if hasattr(rfa, n)]
        for name in embeds:  # built first, so the same seed gives the same values
            assert torch.equal(getattr(rfa, name).weight, getattr(softmax, name).weight), name
        for model in (rfa, softmax):
            head = model.tgt_embed if hasattr(model, "tgt_embed") else model.embed
            assert (model.lm_head.weight is head.weight) == config.tie_embeddings


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(d_model=30, n_heads=4), "multiple of n_heads"),
        (dict(feature_map="softmax"), "feature_map"),
        (dict(positional="rope"), "positional"),
        (dict(n_layers=0), r"n_layers must be an integer in \[1, 1024\], got 0"),
        (dict(d_model="64"), "d_model must be int"),
        (dict(gated=1), "gated must be bool"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(ConfigError, match=message):
        small_config(**kw)


def test_config_roundtrip_and_unknown_fields():
    cfg = small_config(feature_map="arccos")
    assert RFAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown fields: colour"):
        RFAConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    assert cfg.state_shape == (4, 32, 17)


@torch.no_grad()
def test_inplace_state_step_matches_functional_step():
    model = RFALanguageModel(small_config()).eval()
    ids = torch.randint(0, 256, (2, 20))
    _, state = model(ids[:, :10])
    copy = [s.clone() for s in state]
    pos = torch.full((2,), 10)
    want, want_state = model.step(ids[:, 10], state, pos)
    got, same = model.step(ids[:, 10], copy, pos, inplace_state=True)
    assert all(a is b for a, b in zip(same, copy))
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(copy, want_state))


@torch.no_grad()
def test_greedy_step_writes_the_logits_argmax_into_next_token():
    """step(..., next_token=t): the same logits and state as without, t = their argmax (here t is the input)."""
    model = RFALanguageModel(small_config()).eval()
    ids = torch.randint(0, 256, (3, 12))
    _, state = model(ids[:, :11])
    pos = torch.full((3,), 11)
    want, want_state = model.step(ids[:, 11], state, pos)
    token = ids[:, 11].clone()
    got, got_state = model.step(token, state, pos, next_token=token)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(got_state, want_state))
    assert torch.equal(token, want.argmax(-1))


def test_scaled_embedding_reference_rounds_once_and_refuses_ids_outside_the_vocabulary():
    from rfa_export.ops.embedding import scaled_embedding

    g = torch.Generator().manual_seed(3)
    weight = torch.randn(50, 24, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 5), generator=g)
    got = scaled_embedding(ids, weight, math.sqrt(24))
    exact = weight.double()[ids] * math.sqrt(24)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 5, 24)
    assert ((got.double() - exact).abs() <= 2**-8 * exact.abs()).all()  # within half a bf16 ulp: rounded once
    with pytest.raises(IndexError):
        scaled_embedding(torch.tensor([50]), weight, 1.0)
