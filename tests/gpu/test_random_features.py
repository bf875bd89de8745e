"""The fused random-feature kernel against the float64 PyTorch feature map, and the model using it."""

import zlib

import pytest
import torch

from helpers import rel_err
from rfa_export.model.feature_maps import RandomFeatureMap
from rfa_export.ops.random_features import cuda_random_features, naive_random_features, random_features_kernel_supports

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_kernels")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["gaussian", "arccos"])
@pytest.mark.parametrize("lead, H, dh, D", [((1,), 1, 16, 8), ((2, 64, 1), 16, 64, 64), ((3, 37), 4, 128, 128),
                                            ((17,), 2, 48, 100), ((2, 5), 8, 1, 1)])
def test_kernel_matches_float64_reference(dtype, kind, lead, H, dh, D):
    g = torch.Generator().manual_seed(zlib.crc32(f"{kind} {H} {dh} {D}".encode()))  # hash() of a str varies per process
    x = torch.randn(*lead, H, dh, generator=g) * 3
    x[..., 0, :] = 0  # the 1e-6 floor of the norm
    sigma = torch.rand(H, dh, generator=g) + 0.5
    w = torch.randn(H, D, dh, generator=g)
    xc, sc, wc = (t.to("cuda", dtype) for t in (x, sigma, w))
    assert random_features_kernel_supports(xc, sc, wc, kind)
    out = cuda_random_features(xc, sc, wc, kind)
    # the reference sees the inputs as rounded to the dtype
    ref = naive_random_features(xc.double().cpu(), sc.double().cpu(), wc.double().cpu(), kind)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out.double().cpu(), ref) <= TOL[dtype]


def test_unsupported_sizes_fall_back():
    x = torch.randn(2, 3, 200, device="cuda")
    assert not random_features_kernel_supports(x, torch.ones(3, 200, device="cuda"), torch.randn(3, 8, 200, device="cuda"), "gaussian")
    assert not random_features_kernel_supports(x.cpu(), torch.ones(3, 200), torch.randn(3, 8, 200), "gaussian")


def test_feature_map_module_uses_kernel_only_without_autograd():
    phi = RandomFeatureMap("gaussian", 4, 32, 32).cuda()
    x = torch.randn(5, 2, 4, 32, device="cuda")
    with torch.no_grad():
        fused = phi(x)
    plain = phi(x)  # sigma requires grad: the PyTorch path
    assert plain.requires_grad
    assert rel_err(fused.double(), plain.detach().double()) <= 1e-5
