"""The scaled embedding kernel against float64, bit for bit against PyTorch's lookup and scaling, and chained
before a decode linear layer that it lets launch early."""

import math

import pytest
import torch

import rfa_export.ops.decode_linear.triton_linear as triton_linear
import rfa_export.ops.embedding.triton_embedding as triton_embedding
from rfa_export.ops.decode_linear import triton_decode_linear
from rfa_export.ops.embedding import scaled_embedding, scaled_embedding_kernel_supports, triton_scaled_embedding

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_triton():
    if triton_embedding.triton is None:
        pytest.skip("triton not installed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape, V, D", [((1, 1), 32000, 1024), ((3, 70), 500, 1000), ((64,), 7, 24)])
def test_kernel_matches_float64_and_the_torch_lookup(dtype, shape, V, D):
    g = torch.Generator().manual_seed(V + D)
    weight = torch.randn(V, D, generator=g).to(dtype)
    ids = torch.randint(0, V, shape, generator=g)
    scale = math.sqrt(D)  # not a power of two at D 1000 and 24: the product is rounded
    w, i = weight.cuda(), ids.cuda()
    assert scaled_embedding_kernel_supports(i, w)
    got = triton_scaled_embedding(i, w, scale)
    assert got.dtype == dtype and got.shape == (*shape, D)
    # PyTorch forms the product in fp32 and rounds it once to the dtype: the kernel gives the same bits
    assert torch.equal(got, torch.nn.functional.embedding(i, w) * scale)
    want = weight.double()[ids] * scale
    tol = {torch.float32: 2**-23, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    assert ((got.double().cpu() - want).abs() <= tol * want.abs()).all()


def test_ids_outside_the_vocabulary_give_rows_of_nan():
    weight = torch.randn(10, 64).cuda()
    ids = torch.tensor([3, -1, 10, 9]).cuda()
    got = triton_scaled_embedding(ids, weight, 2.0)
    assert torch.isnan(got[1]).all() and torch.isnan(got[2]).all()
    assert torch.equal(got[[0, 3]], weight[[3, 9]] * 2.0)


def test_inputs_the_kernel_does_not_take_go_to_the_reference():
    weight = torch.randn(10, 64, device="cuda")
    ids = torch.tensor([[1, 2], [3, 4]], device="cuda")
    assert not scaled_embedding_kernel_supports(ids.int(), weight)
    assert not scaled_embedding_kernel_supports(ids.t(), weight)  # not dense
    assert not scaled_embedding_kernel_supports(ids, weight.double())
    assert torch.equal(scaled_embedding(ids.t(), weight, 3.0), weight[ids.t()] * 3.0)
    weight.requires_grad_(True)
    out = scaled_embedding(ids, weight, 3.0)  # autograd: the reference, which has a backward
    out.sum().backward()
    assert weight.grad is not None and float(weight.grad[1, 0]) == 3.0


def test_the_next_kernel_launched_early_still_waits_for_the_lookup(monkeypatch):
    """The kernel lets the next one launch at its start; a one-row decode linear layer after it (reading its
    weight strip before its own wait) still sees the looked-up row: the chain equals the serial one exactly,
    eagerly and replayed from a CUDA graph with a new id each time."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs an sm_90 GPU: no early launch to test")
    g = torch.Generator().manual_seed(5)
    table = (torch.randn(32000, 1024, generator=g) / 32).to("cuda", torch.bfloat16)
    w = (torch.randn(3088, 1024, generator=g) / 32).to("cuda", torch.bfloat16)
    token = torch.zeros(1, dtype=torch.int64, device="cuda")

    def chain():
        return triton_decode_linear(triton_scaled_embedding(token, table, 32.0), w, None)

    def serial(t):
        monkeypatch.setattr(triton_embedding, "USE_PDL", False)
        monkeypatch.setattr(triton_linear, "USE_PDL", False)
        token.fill_(t)
        y = chain()
        monkeypatch.setattr(triton_embedding, "USE_PDL", True)
        monkeypatch.setattr(triton_linear, "USE_PDL", True)
        return y

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = chain()
    for t in (7, 31999, 12345):
        want = serial(t)
        token.fill_(t)
        assert torch.equal(chain(), want)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y_graph, want)
