// Fused random feature map (random_features.h). Grid (H, row groups): a block stages W~[h] transposed in
// shared memory once and maps kRows rows of that head: one warp per row for the norm, then one thread per
// (row, feature) for the projection, features on consecutive lanes (conflict-free, coalesced stores).
#include "feature_map.cuh"
#include "random_features.h"
#include "scan_common.cuh"

#include <cmath>

namespace rfa
{
namespace
{

constexpr int kRows = 4; // rows per block: 4 x D outputs, about one per thread at D = 64
constexpr int kThreads = 256;
constexpr int kMaxDim = 128;

size_t featureSharedBytes(int dh, int D)
{
    return sizeof(float) * (size_t(dh) * (D + 1) + size_t(kRows) * dh);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) randomFeaturesKernel(rfa_features_args_t a)
{
    extern __shared__ float smem[];
    int const dh = a.dh, D = a.D, H = a.H;
    int const h = blockIdx.x, row0 = blockIdx.y * kRows;
    int const rows = min(kRows, a.N - row0);
    int const F = a.kind == RFA_FEATURES_GAUSSIAN ? 2 * D : D;
    float* ws = smem;                // [dh][D + 1]: W~[h] transposed
    float* xs = ws + dh * (D + 1);   // [kRows][dh]: x_hat ⊙ sigma
    T const* w = static_cast<T const*>(a.w_tilde) + size_t(h) * D * dh;
    T const* x = static_cast<T const*>(a.x);
    T const* sigma = static_cast<T const*>(a.sigma) + size_t(h) * dh;
    for (int i = threadIdx.x; i < D * dh; i += kThreads)
    {
        int const d = i / dh, j = i % dh;
        ws[j * (D + 1) + d] = toFloat(w[i]);
    }
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < rows; r += kThreads / 32)
    {
        T const* xr = x + (size_t(row0 + r) * H + h) * dh;
        float sq = 0.f;
        for (int j = lane; j < dh; j += 32)
        {
            float const v = toFloat(xr[j]);
            sq = fmaf(v, v, sq);
        }
        float const inv = inverseNorm(warpSum(sq));
        for (int j = lane; j < dh; j += 32)
        {
            xs[r * dh + j] = toFloat(xr[j]) * inv * toFloat(sigma[j]);
        }
    }
    __syncthreads();
    bool const gaussian = a.kind == RFA_FEATURES_GAUSSIAN;
    float const scale = featureScale(gaussian, D);
    T* out = static_cast<T*>(a.out);
    for (int i = threadIdx.x; i < rows * D; i += kThreads)
    {
        int const r = i / D, d = i % D;
        float p = 0.f;
        for (int j = 0; j < dh; ++j)
        {
            p = fmaf(xs[r * dh + j], ws[j * (D + 1) + d], p);
        }
        T* o = out + (size_t(row0 + r) * H + h) * F;
        float2 const f = featurePair(gaussian, p, scale);
        o[d] = fromFloat<T>(f.x);
        if (gaussian)
        {
            o[D + d] = fromFloat<T>(f.y);
        }
    }
}

template <typename T>
cudaError_t launchFeatures(rfa_features_args_t const& a, cudaStream_t stream)
{
    size_t const bytes = featureSharedBytes(a.dh, a.D);
    if (bytes > 48 * 1024)
    {
        cudaError_t const e = cudaFuncSetAttribute(randomFeaturesKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
        if (e != cudaSuccess)
        {
            return e;
        }
    }
    dim3 const grid(a.H, (a.N + kRows - 1) / kRows);
    randomFeaturesKernel<T><<<grid, kThreads, bytes, stream>>>(a);
    return cudaGetLastError();
}

} // namespace
} // namespace rfa

extern "C" {

int rfa_random_features_check(rfa_features_args_t const* a)
{
    if (a == nullptr || !a->x || !a->sigma || !a->w_tilde || !a->out)
    {
        return RFA_ERR_NULL;
    }
    if (a->dtype != RFA_FLOAT32 && a->dtype != RFA_FLOAT16 && a->dtype != RFA_BFLOAT16)
    {
        return RFA_ERR_DTYPE;
    }
    if (a->N < 1 || a->H < 1 || (a->kind != RFA_FEATURES_GAUSSIAN && a->kind != RFA_FEATURES_ARCCOS))
    {
        return RFA_ERR_SHAPE;
    }
    if (a->D < 1 || a->D > rfa::kMaxDim || a->dh < 1 || a->dh > rfa::kMaxDim)
    {
        return RFA_ERR_FEATURE_DIMS;
    }
    return RFA_OK;
}

int rfa_random_features(rfa_features_args_t const* a, cudaStream_t stream)
{
    int const status = rfa_random_features_check(a);
    if (status != RFA_OK)
    {
        return status;
    }
    cudaError_t e;
    switch (a->dtype)
    {
    case RFA_FLOAT32: e = rfa::launchFeatures<float>(*a, stream); break;
    case RFA_FLOAT16: e = rfa::launchFeatures<__half>(*a, stream); break;
    default: e = rfa::launchFeatures<__nv_bfloat16>(*a, stream); break;
    }
    return e == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

} // extern "C"
