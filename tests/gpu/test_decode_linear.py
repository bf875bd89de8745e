"""The decode-sized linear kernel (Triton) against a float64 reference, its programmatic dependent launch
in a chain of kernels, and the models' use of it."""

import pytest
import torch

import rfa_export.ops.decode_attention.cuda as decode_attention_cuda
import rfa_export.ops.decode_linear.op as linear_layers
import rfa_export.ops.decode_linear.triton_linear as triton_linear
import rfa_export.ops.decode_linear.triton_norm_linear as triton_norm_linear
from helpers import rel_err, small_language_model
from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.model import RFALanguageModel
from rfa_export.ops.add_layer_norm import cuda_add_layer_norm
from rfa_export.ops.decode_linear import (decode_linear_kernel_supports, decode_linear_projection_parts,
                                         decode_linear_splits, linear_argmax, naive_decode_linear,
                                         triton_decode_linear, triton_decode_linear_argmax,
                                         residual_norm_linear_supports, triton_decode_linear_partials,
                                         triton_decode_linear_projected, triton_residual_norm_linear,
                                         triton_residual_norm_linear_argmax, triton_residual_norm_linear_projected)

pytestmark = pytest.mark.gpu

TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _needs_triton():
    if triton_linear.triton is None:
        pytest.skip("triton not installed")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 7, 64])
@pytest.mark.parametrize("K, N", [(1024, 3088), (4096, 1024), (100, 33), (1024, 32000)])
@pytest.mark.parametrize("gelu, with_bias", [(False, True), (True, True), (False, False)])
def test_kernel_matches_float64_reference(dtype, M, K, N, gelu, with_bias):
    g = torch.Generator().manual_seed(M * 100003 + K * 31 + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K ** 0.5
    b = torch.randn(N, generator=g) if with_bias else None
    xc, wc, bc = (None if t is None else t.to("cuda", dtype) for t in (x, w, b))
    assert decode_linear_kernel_supports(xc, wc, bc)
    poison = torch.full((2, M, N), float("nan"), device="cuda", dtype=dtype)
    del poison
    y = triton_decode_linear(xc, wc, bc, gelu)
    assert y.shape == (M, N) and y.dtype == dtype and torch.isfinite(y).all()
    ref = naive_decode_linear(xc.double().cpu(), wc.double().cpu(), None if bc is None else bc.double().cpu(), gelu)
    assert rel_err(y.double().cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("pdl", [True, False], ids=["dependent_launch", "plain"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 5, 64])
@pytest.mark.parametrize("K, N", [(1024, 32000), (100, 33), (64, 5000)])
def test_argmax_kernel_matches_the_outputs_argmax(pdl, dtype, M, K, N, monkeypatch):
    """The fused argmax is torch.argmax of the stored output, ties going to the first column, whatever strip
    the tied columns fall in; the output itself matches the float64 reference."""
    monkeypatch.setattr(triton_linear, "USE_PDL", pdl)
    g = torch.Generator().manual_seed(M * 7 + K + N)
    x = torch.randn(M, K, generator=g) * 0.1
    w = torch.randn(N, K, generator=g) / K ** 0.5
    b = torch.randn(N, generator=g)
    x0 = torch.randn(K, generator=g)
    x[0::2] += x0
    x[1::2] -= x0
    # ties: weight row 3 along x0 and copies of it (and of its bias) in other strips, so that in even rows
    # their equal outputs are the largest, in odd rows the smallest (the argmax lies elsewhere)
    w[3] = 8 * x0 / x0.norm()
    for col in (N - 1, 17, 4):
        w[col], b[col] = w[3], b[3]
    xc, wc, bc = (t.to("cuda", dtype) for t in (x, w, b))
    out = torch.full((M,), -7, device="cuda", dtype=torch.int64)
    y = triton_decode_linear_argmax(xc, wc, bc, out)
    torch.cuda.synchronize()
    ref = naive_decode_linear(xc.double().cpu(), wc.double().cpu(), bc.double().cpu())
    assert rel_err(y.double().cpu(), ref) <= TOL[dtype]
    assert torch.equal(out.cpu(), y.float().argmax(-1).cpu())
    assert (out[0::2] == 3).all()  # the tied maximum's first column


def test_argmax_kernel_counts_nan_as_largest_and_keeps_leading_dims():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, generator=g).to("cuda", torch.bfloat16)
    w = torch.randn(3000, 64, generator=g).to("cuda", torch.bfloat16)
    b = torch.zeros(3000, device="cuda", dtype=torch.bfloat16)
    b[2100] = float("nan")
    out = torch.empty((2, 3), device="cuda", dtype=torch.int64)
    y = linear_argmax(x, w, b, out)
    assert y.shape == (2, 3, 3000)
    assert (out == 2100).all() and torch.equal(out, y.argmax(-1))
    with pytest.raises(ValueError, match="out_index must be a dense int64 tensor of shape"):
        triton_decode_linear_argmax(x, w, b, torch.empty(6, device="cuda", dtype=torch.int64))


def test_model_greedy_step_takes_the_fused_argmax(monkeypatch):
    """RFALanguageModel.step(..., next_token=t) writes the argmax of the logits it returns, through the fused
    kernel, also where next_token is the step's own input."""
    model, cfg, ids = small_language_model(RFALanguageModel)
    model = model.to("cuda", torch.bfloat16)
    calls = []
    real = linear_layers.triton_decode_linear_argmax
    monkeypatch.setattr(linear_layers, "triton_decode_linear_argmax", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        token = ids[:, 0].cuda().clone()
        ref, _ = model.step(token.clone(), model.initial_state(2, "cuda"), torch.zeros(2, dtype=torch.long, device="cuda"))
        logits, _ = model.step(token, model.initial_state(2, "cuda"), torch.zeros(2, dtype=torch.long, device="cuda"),
                               next_token=token)
    assert calls == [1]
    assert torch.equal(logits, ref) and torch.equal(token, ref.argmax(-1))


def test_seq2seq_greedy_step_takes_the_fused_argmax(monkeypatch):
    """RFASeq2Seq.step(..., next_token=t) likewise: the argmax of its logits through the fused kernel."""
    from rfa_export.format.config import RFASeq2SeqConfig
    from rfa_export.model.seq2seq import RFASeq2Seq

    torch.manual_seed(0)
    model = RFASeq2Seq(RFASeq2SeqConfig(d_model=128, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ffn=256,
                                        num_features=64)).eval().to("cuda", torch.bfloat16)
    calls = []
    real = linear_layers.triton_decode_linear_argmax
    monkeypatch.setattr(linear_layers, "triton_decode_linear_argmax", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        _, cross = model.encode(torch.randint(0, 256, (3, 10), device="cuda"))
        token = torch.randint(0, model.config.tgt_vocab_size, (3,), device="cuda")
        pos = torch.zeros(3, dtype=torch.long, device="cuda")
        ref, _ = model.step(token.clone(), model.initial_state(3, "cuda"), cross, pos)
        logits, _ = model.step(token, model.initial_state(3, "cuda"), cross, pos, next_token=token)
    assert calls == [1]
    assert torch.equal(logits, ref) and torch.equal(token, ref.argmax(-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 7, 64])
@pytest.mark.parametrize("H, dh, D, extra", [(16, 64, 64, 16), (2, 64, 48, 0), (3, 32, 128, 5)])
def test_projection_epilogue_matches_float64_reference(dtype, M, H, dh, D, extra):
    """The q/k/v GEMM with the random-feature projections of q and k in its epilogue: y as the plain kernel's
    to the bit, each part of proj against float64 sums over its range of head dims, from the stored y."""
    g = torch.Generator().manual_seed(M * 7919 + H * 31 + D)
    K, N = 256, 3 * H * dh + extra
    x = torch.randn(M, 1, K, generator=g).to("cuda", dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to("cuda", dtype)
    b = torch.randn(N, generator=g).to("cuda", dtype)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", dtype)
    w_tilde = torch.randn(H, D, dh, generator=g).to("cuda", dtype)
    parts = decode_linear_projection_parts(x, w, sigma, w_tilde)
    assert parts >= 1 and dh % parts == 0
    poison = torch.full((4, M, H, 2, parts, D + 1), float("nan"), device="cuda")
    del poison
    y, proj = triton_decode_linear_projected(x, w, b, sigma, w_tilde)
    assert torch.equal(y, triton_decode_linear(x, w, b))
    assert proj.shape == (M, H, 2, parts, D + 1) and proj.dtype == torch.float32
    heads = y.double().cpu()[:, 0, : 2 * H * dh].unflatten(-1, (2, H, parts, dh // parts))  # [M, qk, H, part, j]
    s = sigma.double().cpu().unflatten(-1, (parts, dh // parts))  # [H, part, j]
    wt = w_tilde.double().cpu().unflatten(-1, (parts, dh // parts))  # [H, D, part, j]
    ref = torch.cat([torch.einsum("mchpj,hpj,hdpj->mhcpd", heads, s, wt),
                     (heads ** 2).sum(-1).permute(0, 2, 1, 3)[..., None]], -1)
    assert rel_err(proj.double().cpu(), ref) <= 1e-6


@pytest.mark.parametrize("layout", ["aligned", "K_not_a_multiple_of_8", "rows_not_16_byte_aligned"])
def test_projection_weight_prefetch_changes_no_result(layout, monkeypatch):
    """Above PRELOAD_MAX_ROWS rows the projecting GEMM asks for its weight rows into L2 before its wait, where
    they start 16-byte aligned (otherwise it does not): a hint only, so y and proj are bit-identical without
    it, and y matches the float64 reference."""
    g = torch.Generator().manual_seed(11)
    H, dh, D, M = 4, 64, 64, 64
    K = 100 if layout == "K_not_a_multiple_of_8" else 256
    N = 3 * H * dh
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to("cuda", torch.bfloat16)
    if layout == "rows_not_16_byte_aligned":
        buffer = torch.empty(N * K + 1, device="cuda", dtype=torch.bfloat16)
        buffer[1:].copy_(w.flatten())
        w = buffer[1:].view(N, K)
        assert w.is_contiguous() and w.data_ptr() % 16 != 0
    x = torch.randn(M, K, generator=g).to("cuda", torch.bfloat16)
    b = torch.randn(N, generator=g).to("cuda", torch.bfloat16)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to("cuda", torch.bfloat16)
    w_tilde = torch.randn(H, D, dh, generator=g).to("cuda", torch.bfloat16)
    assert M > triton_linear.PRELOAD_MAX_ROWS and decode_linear_kernel_supports(x, w, b)
    results = {}
    for prefetch in (True, False):
        monkeypatch.setattr(triton_linear, "PREFETCH_PROJECTION_WEIGHTS", prefetch)
        results[prefetch] = triton_decode_linear_projected(x, w, b, sigma, w_tilde)
    assert torch.equal(results[True][0], results[False][0]) and torch.equal(results[True][1], results[False][1])
    ref = naive_decode_linear(x.double().cpu(), w.double().cpu(), b.double().cpu())
    assert rel_err(results[True][0].double().cpu(), ref) <= TOL[torch.bfloat16]


def test_projection_epilogue_refusals():
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3 * 2 * 64, 256, device="cuda", dtype=torch.bfloat16)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    sigma, w_tilde = torch.ones(2, 64, **bf16), torch.randn(2, 64, 64, **bf16)
    assert decode_linear_projection_parts(x, w, sigma, w_tilde) > 0
    assert decode_linear_projection_parts(x, w, sigma.float(), w_tilde) == 0  # dtype
    assert decode_linear_projection_parts(x, w[:200], sigma, w_tilde) == 0  # fewer rows than q and k
    assert decode_linear_projection_parts(x, w, sigma[:, :60], w_tilde[..., :60]) == 0  # dh not a multiple of the tile
    assert decode_linear_projection_parts(x, w, sigma, torch.randn(2, 200, 64, **bf16)) == 0  # D > 128
    with pytest.raises(ValueError, match="projection epilogue"):
        triton_decode_linear_projected(x, w[:200], None, sigma, w_tilde)


def test_leading_dims_are_kept():
    x = torch.randn(4, 1, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(48, 256, device="cuda", dtype=torch.bfloat16)
    y = triton_decode_linear(x, w, None)
    assert y.shape == (4, 1, 48)
    assert rel_err(y.double().cpu(), naive_decode_linear(x.double().cpu(), w.double().cpu(), None)) <= 1e-2


def test_unsupported_inputs_are_refused():
    w = torch.randn(32, 64, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    assert decode_linear_kernel_supports(x, w, None)
    assert not decode_linear_kernel_supports(torch.randn(65, 64, device="cuda", dtype=torch.bfloat16), w, None)
    assert not decode_linear_kernel_supports(x.float(), w.float(), None)  # fp32: cuBLAS
    assert not decode_linear_kernel_supports(x, w.half(), None)
    assert not decode_linear_kernel_supports(x.cpu(), w.cpu(), None)
    assert not decode_linear_kernel_supports(x, w.t().contiguous().t(), None)  # not dense
    assert not decode_linear_kernel_supports(torch.randn(8, 32, device="cuda", dtype=torch.bfloat16), w, None)
    assert not decode_linear_kernel_supports(x, w, torch.zeros(31, device="cuda", dtype=torch.bfloat16))


def _chain(x0, layers, norm_w, norm_b):
    """linear -> add + LayerNorm -> linear ...: every kernel reads what the one before it wrote."""
    x, h = x0, x0
    for w, b in layers:
        y = triton_decode_linear(h, w, b, gelu=True)
        x, h = cuda_add_layer_norm(x, y, norm_w, norm_b, 1e-5)
    return x, h


@pytest.mark.usefixtures("needs_kernels")
@pytest.mark.parametrize("rows, early_read", [(64, "strip"), (1, "strip"), (1, "tiles")],
                         ids=["64rows", "1row_strip_read_before_the_wait", "1row_two_tiles"])
def test_dependent_launch_chain_equals_serial_chain(rows, early_read, monkeypatch):
    """Launched early, each kernel must still wait for the one before it: the chain's result with programmatic
    dependent launch is bit-identical to the serial one (captured in a CUDA graph too, as decoding runs it)."""
    g = torch.Generator().manual_seed(3)
    D = 1024
    layers = [((torch.randn(D, D, generator=g) / 32).to("cuda", torch.bfloat16),
               torch.randn(D, generator=g).to("cuda", torch.bfloat16)) for _ in range(12)]
    norm_w = (torch.rand(D, generator=g) + 0.5).to("cuda", torch.bfloat16)
    norm_b = torch.randn(D, generator=g).to("cuda", torch.bfloat16)
    x0 = torch.randn(rows, D, generator=g).to("cuda", torch.bfloat16)
    monkeypatch.setattr(triton_linear, "ONE_ROW_EARLY_READ", early_read)
    monkeypatch.setattr(triton_linear, "USE_PDL", False)
    serial = _chain(x0, layers, norm_w, norm_b)
    monkeypatch.setattr(triton_linear, "USE_PDL", True)
    for _ in range(3):
        early = _chain(x0, layers, norm_w, norm_b)
        assert all(torch.equal(a, b) for a, b in zip(early, serial))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _chain(x0, layers, norm_w, norm_b)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        captured = _chain(x0, layers, norm_w, norm_b)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(captured, serial))


@pytest.mark.parametrize("before_wait", [False, True], ids=["trigger_after_wait", "trigger_before_wait"])
def test_one_row_chain_with_triggers_before_the_wait_equals_serial_chain(before_wait, monkeypatch):
    """Strip programs that let the next kernel launch before their own wait (STRIP_TRIGGERS_BEFORE_WAIT) put
    several layers' kernels in flight at once, each waiting for the one before: a chain of one-row linear
    layers, each reading the last one's output, is bit-identical to the serial chain, eagerly and replayed
    from a CUDA graph, with a new input each round (stale buffers would show), and close to float64."""
    g = torch.Generator().manual_seed(5)
    D = 1024
    layers = [((torch.randn(D, D, generator=g) / 32).to("cuda", torch.bfloat16),
               torch.randn(D, generator=g).to("cuda", torch.bfloat16)) for _ in range(16)]
    inputs = [torch.randn(1, D, generator=g).to("cuda", torch.bfloat16) for _ in range(3)]

    def chain(h):
        for w, b in layers:
            h = triton_decode_linear(h, w, b)
        return h

    monkeypatch.setattr(triton_linear, "STRIP_TRIGGERS_BEFORE_WAIT", before_wait)
    monkeypatch.setattr(triton_linear, "USE_PDL", False)
    serial = [chain(x) for x in inputs]
    monkeypatch.setattr(triton_linear, "USE_PDL", True)
    for x, want in zip(inputs, serial):
        assert torch.equal(chain(x), want)
    static_x = inputs[0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = chain(static_x)
    for x, want in zip(inputs[::-1], serial[::-1]):
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, want)
    ref = inputs[0].double()
    for w, b in layers:  # rounded to bf16 after each layer, as the kernel's output is
        ref = (ref @ w.double().T + b.double()).to(torch.bfloat16).double()
    assert rel_err(serial[0].double(), ref) <= 2e-2


@pytest.mark.parametrize("model_class", [RFALanguageModel, SoftmaxLanguageModel])
def test_models_run_their_linear_layers_through_the_kernel(model_class, monkeypatch):
    model, cfg, ids = small_language_model(model_class)
    calls = []
    real = linear_layers.triton_decode_linear
    monkeypatch.setattr(linear_layers, "triton_decode_linear", lambda *a: calls.append(a[3]) or real(*a))
    with torch.no_grad():
        ref, _ = model.double()(ids)
        out, _ = model.to("cuda", torch.bfloat16)(ids.cuda())
    # per block: q/k/v(/gate), output projection, the first FFN linear with its GELU, the second; the LM head
    assert calls == [False, False, True, False] * cfg.n_layers + [False]
    assert rel_err(out.double().cpu(), ref) <= 5e-2
    calls.clear()
    with torch.no_grad():  # more than 64 rows: cuBLAS
        model(torch.randint(0, 300, (2, 40)).cuda())
    assert calls == []


@pytest.mark.parametrize("K, N, splits", [(4096, 1024, 4), (1024, 1024, 2), (2500, 33, 4)])
def test_partial_sums_add_up_to_the_linear_layer(K, N, splits):
    g = torch.Generator().manual_seed(K + N)
    x = torch.randn(64, K, generator=g).to("cuda", torch.bfloat16)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to("cuda", torch.bfloat16)
    assert decode_linear_splits(w) == splits
    parts = triton_decode_linear_partials(x, w, splits)
    assert parts.shape == (splits, 64, N) and parts.dtype == torch.float32
    ref = x.double().cpu() @ w.double().cpu().t()
    assert rel_err(parts.sum(0).double().cpu(), ref) <= 1e-5  # fp32 accumulation of exact bf16 products
    assert all(p.abs().max() > 0 for p in parts)  # every part holds a share of K
    for impossible in (1, K):  # one part is no split; K parts are shorter than a K tile
        with pytest.raises(ValueError):
            triton_decode_linear_partials(x, w, impossible)


@pytest.mark.usefixtures("needs_kernels")
@pytest.mark.parametrize("model_class", [RFALanguageModel, SoftmaxLanguageModel])
@pytest.mark.parametrize("d_model, split_output_projection", [(128, False), (1024, True)])
def test_models_split_deep_layers_into_the_residual_norm(model_class, d_model, split_output_projection, monkeypatch):
    """d_ffn 2048: the FFN's second linear runs as partial sums that the residual norm adds up; so does the
    attention's output projection where it is 1024 deep (d_model 128: too shallow to split)."""
    import rfa_export.ops.add_layer_norm.op as residual_norm_module

    model, cfg, ids = small_language_model(model_class, n_layers=2, d_ffn=2048, d_model=d_model)
    calls = []
    real = residual_norm_module.cuda_add_layer_norm
    monkeypatch.setattr(residual_norm_module, "cuda_add_layer_norm",
                        lambda *a: calls.append(len(a) > 5 and a[5] is not None) or real(*a))
    with torch.no_grad():
        ref, _ = model.double()(ids)
        out, _ = model.to("cuda", torch.bfloat16)(ids.cuda())
    assert calls == [False] + [split_output_projection, True] * cfg.n_layers
    assert rel_err(out.double().cpu(), ref) <= 5e-2


def test_wide_k_tiles_only_where_measured_and_where_they_fit():
    """256-deep K tiles: from 32 rows, for layers not split over K and 32 columns a program wide (q/k/v and FFN1
    of a d_model 1024 model), only where shared memory holds their stages."""
    hopper = 227 * 1024
    assert triton_linear._tiles(4096, 1024, 64, True, hopper) == (32, 256, 4)  # FFN1 at B64
    assert triton_linear._tiles(3088, 1024, 32, True, hopper) == (32, 256, 4)  # q/k/v at B32
    assert triton_linear._tiles(4096, 1024, 16, True, hopper) == (32, 128, 4)  # fewer rows
    assert triton_linear._tiles(4096, 1024, 64, True, 160 * 1024) == (32, 128, 4)  # an A100's shared memory
    assert triton_linear._tiles(1024, 1024, 64, False, hopper) == (16, 128, 4)  # split: each range stays 128 deep
    assert triton_linear._tiles(32000, 1024, 64, True, hopper) == (64, 128, 3)  # the LM head: no gain measured
    assert triton_linear._tiles(4096, 512, 64, True, hopper) == (32, 128, 4)


def _needs_dependent_launch():
    if not triton_linear._pdl_capable(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs an sm_90 GPU: no early weight reads to test")


@pytest.mark.parametrize("mode", ["strip", "tiles"])
def test_one_row_early_weight_reads_match_float64_reference(mode, monkeypatch):
    """At one row each program reads weights before its wait as ONE_ROW_EARLY_READ says (its whole strip into
    registers, or two K tiles): dense layers with and without GELU,
    partial sums over K, the projection epilogue and the fused argmax all match float64 references."""
    _needs_dependent_launch()
    monkeypatch.setattr(triton_linear, "USE_PDL", True)
    monkeypatch.setattr(triton_linear, "ONE_ROW_EARLY_READ", mode)
    g = torch.Generator().manual_seed(29)
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    for K, N, gelu in ((1024, 3088, False), (1024, 4096, True), (100, 33, True), (4096, 1024, False)):
        x = torch.randn(1, K, generator=g).to(**bf16)
        w = (torch.randn(N, K, generator=g) / K ** 0.5).to(**bf16)
        b = torch.randn(N, generator=g).to(**bf16)
        ref = naive_decode_linear(x.double().cpu(), w.double().cpu(), b.double().cpu(), gelu)
        assert rel_err(triton_decode_linear(x, w, b, gelu).double().cpu(), ref) <= TOL[torch.bfloat16], (K, N)
    for K, N, splits in ((4096, 1024, 4), (1024, 1024, 2), (2500, 33, 4)):
        x = torch.randn(1, K, generator=g).to(**bf16)
        w = (torch.randn(N, K, generator=g) / K ** 0.5).to(**bf16)
        parts = triton_decode_linear_partials(x, w, splits)
        ref = x.double().cpu() @ w.double().cpu().t()
        assert rel_err(parts.sum(0).double().cpu(), ref) <= 1e-5, (K, N)  # fp32 sums of exact bf16 products
    H, dh, D, K = 16, 64, 64, 1024
    x = torch.randn(1, K, generator=g).to(**bf16)
    w = (torch.randn(3 * H * dh + 16, K, generator=g) / K ** 0.5).to(**bf16)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to(**bf16)
    w_tilde = torch.randn(H, D, dh, generator=g).to(**bf16)
    y, proj = triton_decode_linear_projected(x, w, None, sigma, w_tilde)
    assert rel_err(y.double().cpu(), naive_decode_linear(x.double().cpu(), w.double().cpu(), None)) <= TOL[torch.bfloat16]
    parts = proj.shape[3]
    heads = y.double().cpu()[:, : 2 * H * dh].unflatten(-1, (2, H, parts, dh // parts))
    ref = torch.einsum("mchpj,hpj,hdpj->mhcpd", heads, sigma.double().cpu().unflatten(-1, (parts, dh // parts)),
                       w_tilde.double().cpu().unflatten(-1, (parts, dh // parts)))
    assert rel_err(proj[..., :D].double().cpu(), ref) <= 1e-6
    x = torch.randn(1, 1024, generator=g).to(**bf16)
    w = (torch.randn(32000, 1024, generator=g) / 32).to(**bf16)
    index = torch.empty(1, dtype=torch.int64, device="cuda")
    y = triton_decode_linear_argmax(x, w, None, index)
    assert index.item() == y.argmax(-1).item()
    assert rel_err(y.double().cpu(), naive_decode_linear(x.double().cpu(), w.double().cpu(), None)) <= TOL[torch.bfloat16]


def test_whole_strips_are_read_early_only_at_one_row_and_where_they_fit(monkeypatch):
    monkeypatch.setattr(triton_linear, "ONE_ROW_EARLY_READ", "strip")
    assert triton_linear.strip_columns(1, 32, 1024) == 1024  # q/k/v, FFN1 of a d_model 1024 model
    assert triton_linear.strip_columns(1, 16, 1024) == 1024  # a quarter of FFN2's K
    assert triton_linear.strip_columns(1, 16, 640) == 1024  # rounded up to a power of two
    assert triton_linear.strip_columns(1, 64, 1024) == 0  # the LM head's strip is too large
    assert triton_linear.strip_columns(1, 32, 2048) == 0
    assert triton_linear.strip_columns(2, 32, 1024) == 0  # more than one row
    monkeypatch.setattr(triton_linear, "ONE_ROW_EARLY_READ", "tiles")
    assert triton_linear.strip_columns(1, 32, 1024) == 0


def _added_term(y_form, K, g, dev):
    """(y, y_partials, y_bias) for a one-row residual add: "tensor" a row, "<S>_partials[_with_bias]" S fp32 partial
    sums [S, 1, 1, K] (and their bias [K]), "none" nothing to add."""
    y = y_partials = y_bias = None
    if y_form == "tensor":
        y = torch.randn(1, 1, K, generator=g).to(**dev)
    elif y_form != "none":
        y_partials = torch.randn(int(y_form[0]), 1, 1, K, generator=g).to(dev["device"])
        if "bias" in y_form:
            y_bias = torch.randn(K, generator=g).to(**dev)
    return y, y_partials, y_bias


def _added_reference(y, y_partials, y_bias):
    """The added term in float64 on the CPU (None: nothing added)."""
    if y is not None:
        return y.double().cpu()
    if y_partials is None:
        return None
    total = y_partials.double().cpu().sum(0)
    return total if y_bias is None else total + y_bias.double().cpu()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("y_form", ["tensor", "2_partials", "4_partials_with_bias", "none"])
@pytest.mark.parametrize("K, N, gelu, ln_bias", [(1024, 4096, True, True), (100, 33, False, False), (1024, 3088, False, True)])
def test_residual_norm_linear_matches_float64_reference(dtype, y_form, K, N, gelu, ln_bias):
    """One row: (x + y, linear(LayerNorm(x + y))) in one kernel against float64, y a tensor, a split layer's fp32
    partial sums (with and without their bias) or none; the stored sum is x + y rounded once (twice with
    partials: their total is rounded first, as the split layer's output would be)."""
    g = torch.Generator().manual_seed(K * 7 + N + len(y_form))
    dev = {"device": "cuda", "dtype": dtype}
    x = (torch.randn(1, 1, K, generator=g) * 3 + 20).to(**dev)  # a large mean: the variance must not cancel
    y, y_partials, y_bias = _added_term(y_form, K, g, dev)
    ln_w = (torch.rand(K, generator=g) + 0.5).to(**dev)
    ln_b = torch.randn(K, generator=g).to(**dev) if ln_bias else None
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(**dev)
    b = torch.randn(N, generator=g).to(**dev)
    assert residual_norm_linear_supports(x, y, y_partials, y_bias, ln_w, ln_b, w, b)
    s, out = triton_residual_norm_linear(x, y, y_partials, y_bias, ln_w, ln_b, 1e-5, w, b, gelu)
    assert s.shape == x.shape and out.shape == (1, 1, N) and out.dtype == dtype
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    y_ref = _added_reference(y, y_partials, y_bias)
    s_ref = d(x) if y_ref is None else d(x) + y_ref
    assert rel_err(s.double().cpu(), s_ref) <= TOL[dtype]
    if y is not None:  # one rounding of the exact sum of two values of the dtype
        assert torch.equal(s, (x.float() + y.float()).to(dtype))
    if y_form == "none":
        assert s.data_ptr() == x.data_ptr()
    h_ref = torch.nn.functional.layer_norm(s.double().cpu(), (K,), d(ln_w), d(ln_b), 1e-5)
    assert rel_err(out.double().cpu(), naive_decode_linear(h_ref, d(w), d(b), gelu)) <= TOL[dtype]


def test_residual_norm_linear_refusals(monkeypatch):
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    x, y = torch.randn(1, 1024, **bf16), torch.randn(1, 1024, **bf16)
    ln_w, w = torch.ones(1024, **bf16), torch.randn(4096, 1024, **bf16)
    parts = torch.randn(2, 1, 1024, device="cuda")
    assert residual_norm_linear_supports(x, y, None, None, ln_w, None, w, None)
    assert not residual_norm_linear_supports(torch.randn(2, 1024, **bf16), None, None, None, ln_w, None, w, None)  # 2 rows
    assert not residual_norm_linear_supports(x, y, None, None, ln_w, None, torch.randn(32000, 1024, **bf16), None)  # strip too wide
    assert not residual_norm_linear_supports(x, y, parts, None, ln_w, None, w, None)  # both forms of y
    assert not residual_norm_linear_supports(x, None, parts.half(), None, ln_w, None, w, None)  # partials not fp32
    assert not residual_norm_linear_supports(x, None, torch.randn(5, 1, 1024, device="cuda"), None, ln_w, None, w, None)
    assert not residual_norm_linear_supports(x, None, None, ln_w, ln_w, None, w, None)  # a bias without partials
    assert not residual_norm_linear_supports(x, y, None, None, ln_w.float(), None, w, None)  # norm weight dtype
    monkeypatch.setattr(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", False)
    assert not residual_norm_linear_supports(x, y, None, None, ln_w, None, w, None)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("y_form", ["tensor", "2_partials_with_bias", "4_partials", "none"])
@pytest.mark.parametrize("K, H, dh, D, extra", [(1024, 16, 64, 64, 16), (100, 2, 64, 48, 0), (1024, 3, 32, 128, 5)])
def test_residual_norm_linear_projected_matches_float64_reference(dtype, y_form, K, H, dh, D, extra):
    """One row: the q/k/v GEMM of a decode step with the residual add and norm before it and the feature
    projections after it, in one kernel: the sum and the output against float64, the output bit for bit as the
    same kernel's without the projections, each part of proj against float64 sums over the stored output."""
    g = torch.Generator().manual_seed(K * 3 + H * 31 + D + len(y_form))
    dev = {"device": "cuda", "dtype": dtype}
    N = 3 * H * dh + extra
    x = (torch.randn(1, 1, K, generator=g) * 3 + 20).to(**dev)
    y, y_partials, y_bias = _added_term(y_form, K, g, dev)
    ln_w, ln_b = (torch.rand(K, generator=g) + 0.5).to(**dev), torch.randn(K, generator=g).to(**dev)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(**dev)
    b = torch.randn(N, generator=g).to(**dev)
    sigma = (torch.rand(H, dh, generator=g) + 0.5).to(**dev)
    w_tilde = torch.randn(H, D, dh, generator=g).to(**dev)
    parts = decode_linear_projection_parts(x, w, sigma, w_tilde)
    assert parts >= 1 and residual_norm_linear_supports(x, y, y_partials, y_bias, ln_w, ln_b, w, b)
    poison = torch.full((4, 1, H, 2, parts, D + 1), float("nan"), device="cuda")
    del poison
    s, out, proj = triton_residual_norm_linear_projected(x, y, y_partials, y_bias, ln_w, ln_b, 1e-5, w, b, sigma,
                                                         w_tilde)
    assert out.shape == (1, 1, N) and proj.shape == (1, H, 2, parts, D + 1)
    s_plain, out_plain = triton_residual_norm_linear(x, y, y_partials, y_bias, ln_w, ln_b, 1e-5, w, b)
    assert torch.equal(s, s_plain) and torch.equal(out, out_plain)
    if y_form == "none":
        assert s.data_ptr() == x.data_ptr()
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    y_ref = _added_reference(y, y_partials, y_bias)
    assert rel_err(s.double().cpu(), d(x) if y_ref is None else d(x) + y_ref) <= TOL[dtype]
    h_ref = torch.nn.functional.layer_norm(s.double().cpu(), (K,), d(ln_w), d(ln_b), 1e-5)
    assert rel_err(out.double().cpu(), naive_decode_linear(h_ref, d(w), d(b))) <= TOL[dtype]
    heads = out.double().cpu()[:, 0, : 2 * H * dh].unflatten(-1, (2, H, parts, dh // parts))  # [M, qk, H, part, j]
    sg = d(sigma).unflatten(-1, (parts, dh // parts))
    wt = d(w_tilde).unflatten(-1, (parts, dh // parts))
    ref = torch.cat([torch.einsum("mchpj,hpj,hdpj->mhcpd", heads, sg, wt),
                     (heads ** 2).sum(-1).permute(0, 2, 1, 3)[..., None]], -1)
    assert rel_err(proj.double().cpu(), ref) <= 1e-6


def test_row_norm_needs_a_whole_strip():
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    x, ln_w = torch.randn(2, 1024, **bf16), torch.ones(1024, **bf16)
    norm = triton_linear.RowNorm(None, 0, None, ln_w, None, 1e-5, x)
    with pytest.raises(ValueError, match="whole"):  # two rows: no strip
        triton_decode_linear(x, torch.randn(64, 1024, **bf16), None, norm=norm)
    with pytest.raises(ValueError, match="whole"):  # the LM head's strip is too wide
        triton_decode_linear(x[:1], torch.randn(32000, 1024, **bf16), None, norm=norm)


def _counting(monkeypatch, name, calls):
    real = getattr(linear_layers, name)
    monkeypatch.setattr(linear_layers, name, lambda *a: calls.append(name) or real(*a))


@pytest.mark.usefixtures("needs_kernels")
@pytest.mark.parametrize("model_class", [RFALanguageModel, SoftmaxLanguageModel])
@pytest.mark.parametrize("d_model", [128, 1024], ids=["output_projection_whole", "output_projection_split"])
def test_one_row_forward_adds_and_normalises_inside_the_next_linear_kernel(model_class, d_model, monkeypatch):
    """At one row each residual add and norm before a block's q/k/v projection and before its FFN run inside
    that linear layer's kernel (the added term the previous FFN's partial sums, none for the first block, the
    attention's output whole or as partial sums): the logits match float64 and the separate kernels, and are
    bit-identical with and without dependent launches."""
    model, cfg, ids = small_language_model(model_class, n_layers=2, d_ffn=2048, d_model=d_model)
    ids = ids[:1, :1]
    calls = []
    _counting(monkeypatch, "triton_residual_norm_linear", calls)
    with torch.no_grad():
        ref, _ = model.double()(ids)
        model = model.to("cuda", torch.bfloat16)
        fused, _ = model(ids.cuda())
        assert len(calls) == 2 * cfg.n_layers  # q/k/v and FFN1 of each block
        monkeypatch.setattr(triton_linear, "USE_PDL", False)
        assert torch.equal(model(ids.cuda())[0], fused)
        monkeypatch.setattr(triton_linear, "USE_PDL", True)
        monkeypatch.setattr(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", False)
        calls.clear()
        separate, _ = model(ids.cuda())
        assert calls == []
    assert rel_err(fused.double().cpu(), ref) <= 5e-2
    assert rel_err(fused.double().cpu(), separate.double().cpu()) <= 2e-2


@pytest.mark.usefixtures("needs_kernels")
@pytest.mark.parametrize("d_model", [128, 1024], ids=["output_projection_whole", "output_projection_split"])
@pytest.mark.parametrize("early_triggers, ffn1_after_wait", [(False, False), (True, False), (True, True)],
                         ids=["triggers_after_waits", "triggers_early", "triggers_early_but_ffn1"])
def test_one_row_decode_step_adds_and_normalises_inside_the_projecting_kernel(d_model, early_triggers, ffn1_after_wait,
                                                                              monkeypatch):
    """The RFA model's decode step at one row: the add and norm before each block's q/k/v GEMM run in that GEMM's
    kernel, with the feature projections in its epilogue; logits and updated states match the float64 step,
    and the separate kernels; bit-identical with and without dependent launches, also where each strip
    program and the attention step let the next kernel launch early (their settings early_triggers), with
    FFN1 alone triggering after its wait or not (ffn1_after_wait)."""
    monkeypatch.setattr(triton_linear, "STRIP_TRIGGERS_BEFORE_WAIT", early_triggers)
    monkeypatch.setattr(triton_linear, "GELU_STRIP_TRIGGERS_AFTER_WAIT", ffn1_after_wait)
    monkeypatch.setattr(decode_attention_cuda, "NEXT_KERNEL_AT_START", early_triggers)
    model, cfg, ids = small_language_model(RFALanguageModel, n_layers=2, d_ffn=2048, d_model=d_model)
    token, pos = ids[:1, 0], torch.tensor([3])
    states = [torch.rand(1, *cfg.state_shape, generator=torch.Generator().manual_seed(i)) * 0.1 + 0.01
              for i in range(cfg.n_layers)]
    calls = []
    _counting(monkeypatch, "triton_residual_norm_linear_projected", calls)
    _counting(monkeypatch, "triton_residual_norm_linear", calls)
    with torch.no_grad():
        ref, ref_states = model.double().step(token, [s.double() for s in states], pos)
        model = model.to("cuda", torch.bfloat16)

        def step():
            cuda_states = [s.cuda() for s in states]
            logits, _ = model.step(token.cuda(), cuda_states, pos.cuda(), inplace_state=True)
            return logits, cuda_states

        fused, fused_states = step()
        assert calls == ["triton_residual_norm_linear_projected", "triton_residual_norm_linear"] * cfg.n_layers
        monkeypatch.setattr(triton_linear, "USE_PDL", False)
        plain, plain_states = step()
        assert torch.equal(plain, fused) and all(torch.equal(a, b) for a, b in zip(plain_states, fused_states))
        monkeypatch.setattr(triton_linear, "USE_PDL", True)
        monkeypatch.setattr(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", False)
        calls.clear()
        separate, separate_states = step()
        assert calls == []
    assert rel_err(fused.double().cpu(), ref) <= 5e-2
    assert rel_err(fused.double().cpu(), separate.double().cpu()) <= 2e-2
    for got, want in zip(fused_states, ref_states):
        assert rel_err(got.double().cpu(), want) <= 2e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("K, N", [(512, 32000), (100, 9000)])
@pytest.mark.parametrize("y_form", ["2_partials_with_bias", "tensor"])
def test_residual_norm_linear_argmax_matches_float64_reference(dtype, K, N, y_form):
    """One row, an LM head whose strips are read whole (64 x 512 or fewer): the final residual add and norm
    inside its kernel, outputs against float64, the argmax that of the stored output."""
    g = torch.Generator().manual_seed(K + N + len(y_form))
    dev = {"device": "cuda", "dtype": dtype}
    x = torch.randn(1, 1, K, generator=g).to(**dev)
    y, y_partials, y_bias = _added_term(y_form, K, g, dev)
    ln_w, ln_b = (torch.rand(K, generator=g) + 0.5).to(**dev), torch.randn(K, generator=g).to(**dev)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(**dev)
    index = torch.full((1, 1), -1, device="cuda", dtype=torch.int64)
    assert residual_norm_linear_supports(x, y, y_partials, y_bias, ln_w, ln_b, w, None)
    s, out = triton_residual_norm_linear_argmax(x, y, y_partials, y_bias, ln_w, ln_b, 1e-5, w, None, index)
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    y_ref = _added_reference(y, y_partials, y_bias)
    assert rel_err(s.double().cpu(), d(x) + y_ref) <= TOL[dtype]
    h_ref = torch.nn.functional.layer_norm(s.double().cpu(), (K,), d(ln_w), d(ln_b), 1e-5)
    assert rel_err(out.double().cpu(), naive_decode_linear(h_ref, d(w), None)) <= TOL[dtype]
    assert torch.equal(index, out.argmax(-1))


@pytest.mark.usefixtures("needs_kernels")
def test_greedy_step_takes_the_final_norm_into_the_lm_head_where_its_strips_fit(monkeypatch):
    """The RFA model's greedy step at one row, d_model 128 (the LM head's 64 x 128 strips are read whole): the
    final norm runs inside the LM head's kernel; logits match the float64 step and the separate kernels, the
    next token is their argmax."""
    model, cfg, ids = small_language_model(RFALanguageModel, n_layers=2)
    token, pos = ids[:1, 0], torch.tensor([2])
    states = [torch.rand(1, *cfg.state_shape, generator=torch.Generator().manual_seed(i)) * 0.1 + 0.01
              for i in range(cfg.n_layers)]
    calls = []
    _counting(monkeypatch, "triton_residual_norm_linear_argmax", calls)
    with torch.no_grad():
        ref, _ = model.double().step(token, [s.double() for s in states], pos)
        model = model.to("cuda", torch.bfloat16)
        results = {}
        for fused in (True, False):
            monkeypatch.setattr(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", fused)
            next_token = torch.full((1,), -1, device="cuda", dtype=torch.int64)
            logits, _ = model.step(token.cuda(), [s.cuda() for s in states], pos.cuda(), inplace_state=True,
                                   next_token=next_token)
            assert torch.equal(next_token, logits.argmax(-1))
            results[fused] = logits
    assert calls == ["triton_residual_norm_linear_argmax"]  # only with the fusion on
    assert rel_err(results[True].double().cpu(), ref) <= 5e-2
    assert rel_err(results[True].double().cpu(), results[False].double().cpu()) <= 2e-2


@pytest.mark.usefixtures("needs_kernels")
def test_seq2seq_greedy_step_adds_and_normalises_inside_the_next_linear_kernels(monkeypatch):
    """RFASeq2Seq.step at one row: the add and norm before each decoder block's self-attention q/k/v GEMM (with
    the feature projections), before its FFN1 and before the LM head (strips 64 x 128, read whole) run inside
    those kernels; logits match the float64 step and the separate kernels, the next token is their argmax, and
    they are bit-identical with and without dependent launches."""
    from rfa_export.format.config import RFASeq2SeqConfig
    from rfa_export.model.seq2seq import RFASeq2Seq

    torch.manual_seed(0)
    model = RFASeq2Seq(RFASeq2SeqConfig(d_model=128, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ffn=256,
                                        num_features=64)).eval()
    src, token, pos = torch.randint(0, 256, (1, 7)), torch.tensor([5]), torch.tensor([3])
    states = [torch.rand(1, *model.config.state_shape, generator=torch.Generator().manual_seed(i)) * 0.1 + 0.01
              for i in range(2)]
    calls = []
    for name in ("triton_residual_norm_linear_projected", "triton_residual_norm_linear",
                 "triton_residual_norm_linear_argmax"):
        _counting(monkeypatch, name, calls)
    with torch.no_grad():
        ref_model = model.double()
        ref, _ = ref_model.step(token, [s.double() for s in states], ref_model.encode(src)[1], pos)
        model = model.to("cuda", torch.bfloat16)
        cross = model.encode(src.cuda())[1]

        def step():
            next_token = torch.full((1,), -1, device="cuda", dtype=torch.int64)
            logits, _ = model.step(token.cuda(), [s.cuda() for s in states], cross, pos.cuda(), inplace_state=True,
                                   next_token=next_token)
            assert torch.equal(next_token, logits.argmax(-1))
            return logits

        fused = step()
        assert calls == (["triton_residual_norm_linear_projected", "triton_residual_norm_linear"] * 2
                         + ["triton_residual_norm_linear_argmax"])
        monkeypatch.setattr(triton_linear, "USE_PDL", False)
        assert torch.equal(step(), fused)
        monkeypatch.setattr(triton_linear, "USE_PDL", True)
        monkeypatch.setattr(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", False)
        separate = step()
    assert rel_err(fused.double().cpu(), ref) <= 5e-2
    assert rel_err(fused.double().cpu(), separate.double().cpu()) <= 2e-2
