"""The fused residual add + LayerNorm kernel against a float64 reference, and the models using it."""

import pytest
import torch

import rfa_export.ops.add_layer_norm.op as add_layer_norm_op
from helpers import rel_err, small_language_model
from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.model import RFALanguageModel
from rfa_export.ops.add_layer_norm import add_layer_norm_kernel_supports, cuda_add_layer_norm, naive_add_layer_norm

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("N, D", [(1, 1), (64, 1024), (3, 1000), (300, 4096), (7, 129)])
@pytest.mark.parametrize("with_add, with_bias", [(True, True), (False, True), (True, False)])
def test_kernel_matches_float64_reference(dtype, N, D, with_add, with_bias):
    g = torch.Generator().manual_seed(N * 10007 + D)
    x = torch.randn(N, D, generator=g) * 3 + 20  # a large mean: the variance must not cancel
    y = torch.randn(N, D, generator=g) if with_add else None
    w = torch.rand(D, generator=g) + 0.5
    b = torch.randn(D, generator=g) if with_bias else None
    xc, yc, wc, bc = (None if t is None else t.to("cuda", dtype) for t in (x, y, w, b))
    assert add_layer_norm_kernel_supports(xc, yc, wc, bc, 1e-5)
    # NaN in the block the caching allocator is likely to hand the outputs: a row left unwritten shows
    poison = torch.full((2, N, D), float("nan"), device="cuda", dtype=dtype)
    del poison
    s, out = cuda_add_layer_norm(xc, yc, wc, bc, 1e-5)
    assert s.dtype == out.dtype == dtype and s.shape == out.shape == (N, D)
    # the sum is rounded to the dtype exactly as PyTorch adds two tensors of that dtype
    assert torch.equal(s, xc if yc is None else xc + yc)
    ref_s, ref = naive_add_layer_norm(s.double().cpu(), None, wc.double().cpu(),
                                      None if bc is None else bc.double().cpu(), 1e-5)
    assert torch.isfinite(out).all()
    if D > 1:
        assert rel_err(out.double().cpu(), ref) <= TOL[dtype]
    else:  # a single column normalises to 0: out is the bias
        assert torch.equal(out.double().cpu(), ref)


def test_unsupported_inputs_are_refused():
    x = torch.randn(4, 5000, device="cuda")
    assert not add_layer_norm_kernel_supports(x, None, torch.ones(5000, device="cuda"), None, 1e-5)  # D > 4096
    x = torch.randn(4, 64, device="cuda")
    w = torch.ones(64, device="cuda")
    assert not add_layer_norm_kernel_supports(x, x.half(), w, None, 1e-5)  # mixed dtypes
    assert not add_layer_norm_kernel_supports(x.cpu(), None, w.cpu(), None, 1e-5)
    assert not add_layer_norm_kernel_supports(x.t(), None, w, None, 1e-5)  # not dense
    assert not add_layer_norm_kernel_supports(x, x[:2], w, None, 1e-5)  # y of another shape
    assert not add_layer_norm_kernel_supports(x, None, w, None, -1.0)  # eps < 0
    assert add_layer_norm_kernel_supports(x, x, w, None, 1e-5)


def _count_fused_calls(monkeypatch):
    calls = []
    real = add_layer_norm_op.cuda_add_layer_norm

    def counting(*args):
        calls.append(args[1] is not None)
        return real(*args)

    monkeypatch.setattr(add_layer_norm_op, "cuda_add_layer_norm", counting)
    return calls


@pytest.mark.parametrize("model_class", [RFALanguageModel, SoftmaxLanguageModel])
def test_models_fuse_every_residual_add_with_its_norm(model_class, monkeypatch):
    model, cfg, ids = small_language_model(model_class)
    with torch.no_grad():
        ref, _ = model.double()(ids)
        calls = _count_fused_calls(monkeypatch)
        out, _ = model.float().cuda()(ids.cuda())
    # one plain norm before the first block, then two adds per block, each with the norm after it
    assert calls == [False] + [True] * (2 * cfg.n_layers)
    assert rel_err(out.cpu(), ref) <= 1e-4
    with torch.no_grad():
        out16, _ = model.to(torch.bfloat16)(ids.cuda())
    assert rel_err(out16.cpu(), ref) <= 5e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_matches_reference_on_unaligned_rows(dtype):
    """Tensors that start off a 16-byte boundary take the element-wise path."""
    g = torch.Generator().manual_seed(5)
    N, D = 9, 1024
    flat = torch.randn(2, N * D + 1, generator=g).to("cuda", dtype)
    x, y = (t[1:].view(N, D) for t in flat)
    w = torch.rand(D, generator=g).to("cuda", dtype) + 0.5
    assert x.data_ptr() % 16 != 0 and add_layer_norm_kernel_supports(x, y, w, None, 1e-5)
    s, out = cuda_add_layer_norm(x, y, w, None, 1e-5)
    assert torch.equal(s, x + y)
    _, ref = naive_add_layer_norm(s.double().cpu(), None, w.double().cpu(), None, 1e-5)
    assert rel_err(out.double().cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("N, D", [(64, 1024), (3, 1000), (7, 129)])
@pytest.mark.parametrize("splits, with_y_bias", [(2, True), (4, True), (3, False)])
def test_kernel_matches_float64_reference_with_partial_sums(dtype, N, D, splits, with_y_bias):
    """y as a split GEMM's fp32 partial sums: the kernel adds them and y_bias, rounds once, then as above."""
    g = torch.Generator().manual_seed(N * 7919 + D * 13 + splits)
    x = torch.randn(N, D, generator=g) * 3 + 20
    parts = torch.randn(splits, N, D, generator=g)
    y_bias = torch.randn(D, generator=g) if with_y_bias else None
    w = torch.rand(D, generator=g) + 0.5
    b = torch.randn(D, generator=g)
    xc, wc, bc = (t.to("cuda", dtype) for t in (x, w, b))
    pc = parts.cuda()
    ybc = None if y_bias is None else y_bias.to("cuda", dtype)
    assert add_layer_norm_kernel_supports(xc, None, wc, bc, 1e-5, pc, ybc)
    s, out = cuda_add_layer_norm(xc, None, wc, bc, 1e-5, pc, ybc)
    assert s.dtype == out.dtype == dtype and s.shape == out.shape == (N, D)
    ref_s, ref = naive_add_layer_norm(xc.double().cpu(), None, wc.double().cpu(), bc.double().cpu(), 1e-5,
                                      pc.double().cpu(), None if ybc is None else ybc.double().cpu())
    # the fp32 sum of the partials may round to the neighbour of the float64 sum's rounding: one ulp of dtype
    assert rel_err(s.double().cpu(), ref_s) <= TOL[dtype]
    _, ref_of_s = naive_add_layer_norm(s.double().cpu(), None, wc.double().cpu(), bc.double().cpu(), 1e-5)
    assert rel_err(out.double().cpu(), ref_of_s) <= TOL[dtype]
    assert rel_err(out.double().cpu(), ref) <= 5 * TOL[dtype]


def test_partial_sums_are_refused_unless_well_formed():
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(64, device="cuda", dtype=torch.bfloat16)
    parts = torch.randn(2, 4, 64, device="cuda")
    yb = torch.zeros(64, device="cuda", dtype=torch.bfloat16)
    assert add_layer_norm_kernel_supports(x, None, w, None, 1e-5, parts, yb)
    assert not add_layer_norm_kernel_supports(x, None, w, None, 1e-5, parts.half(), yb)  # partials not fp32
    assert not add_layer_norm_kernel_supports(x, None, w, None, 1e-5, parts[:1], yb)  # one part
    assert not add_layer_norm_kernel_supports(x, None, w, None, 1e-5, parts[:, :2], yb)  # other rows
    assert not add_layer_norm_kernel_supports(x, x, w, None, 1e-5, parts, yb)  # y and partials
    assert not add_layer_norm_kernel_supports(x, x, w, None, 1e-5, None, yb)  # y_bias without partials
    assert not add_layer_norm_kernel_supports(x, None, w, None, 1e-5, parts, yb.float())  # y_bias dtype
