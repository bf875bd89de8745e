// Fused cross-attention read (cross_read.h). One block per (row, head), eight warps. The block stages
// W~[h] in shared memory (coalesced), normalises q, projects it (one thread per projection) and maps the
// features; then warp w sums phi_f S[f, j] over its eighth of the features for every column j (lanes on
// consecutive columns: coalesced, and eight independent chains rather than one of F dependent loads), the
// warps' partial sums are added in shared memory and the block applies the bounded readout.
#include "cross_read.h"
#include "feature_map.cuh"
#include "scan_common.cuh"

#include <cmath>

namespace rfa
{
namespace
{

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxDim = 128;

size_t crossReadSharedBytes(int dh, int D)
{
    return sizeof(float) * (size_t(dh) * (D + 1) + dh + 2 * D + size_t(kWarps) * (dh + 1) + kWarps);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) crossReadKernel(rfa_cross_read_args_t a)
{
    extern __shared__ float smem[];
    int const row = blockIdx.x, h = blockIdx.y;
    int const dh = a.dh, D = a.D, H = a.H;
    bool const gaussian = a.kind == RFA_FEATURES_GAUSSIAN;
    int const F = gaussian ? 2 * D : D;
    int const cols = dh + 1;
    float* ws = smem;                  // [dh][D + 1]: W~[h] transposed
    float* xs = ws + dh * (D + 1);     // [dh]: x_hat ⊙ sigma
    float* phi = xs + dh;              // [F]: the features, rounded to T as the composed path rounds them
    float* partial = phi + 2 * D;      // [kWarps][cols]
    float* red = partial + kWarps * cols; // [kWarps]
    T const* q = static_cast<T const*>(a.q) + (size_t(row) * H + h) * dh;
    T const* sigma = static_cast<T const*>(a.sigma) + size_t(h) * dh;
    T const* w = static_cast<T const*>(a.w_tilde) + size_t(h) * D * dh;
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    for (int i = threadIdx.x; i < D * dh; i += kThreads)
    {
        int const d = i / dh, j = i % dh;
        ws[j * (D + 1) + d] = toFloat(w[i]);
    }
    if (warp == 0)
    {
        float sq = 0.f;
        for (int j = lane; j < dh; j += 32)
        {
            float const v = toFloat(q[j]);
            sq = fmaf(v, v, sq);
        }
        float const inv = inverseNorm(warpSum(sq));
        for (int j = lane; j < dh; j += 32)
        {
            xs[j] = toFloat(q[j]) * inv * toFloat(sigma[j]);
        }
    }
    __syncthreads();
    float const scale = featureScale(gaussian, D);
    for (int d = threadIdx.x; d < D; d += kThreads)
    {
        float p = 0.f;
        for (int j = 0; j < dh; ++j)
        {
            p = fmaf(xs[j], ws[j * (D + 1) + d], p);
        }
        float2 const f = featurePair(gaussian, p, scale);
        phi[d] = toFloat(fromFloat<T>(f.x));
        if (gaussian)
        {
            phi[D + d] = toFloat(fromFloat<T>(f.y));
        }
    }
    __syncthreads();

    float const* S = a.state + (size_t(row / a.rows_per_source) * H + h) * size_t(F) * cols;
    int const per = (F + kWarps - 1) / kWarps;
    int const f0 = warp * per, f1 = min(F, f0 + per);
    for (int j = lane; j < cols; j += 32)
    {
        float acc = 0.f;
#pragma unroll 8
        for (int f = f0; f < f1; ++f)
        {
            acc = fmaf(phi[f], __ldg(S + size_t(f) * cols + j), acc);
        }
        partial[warp * cols + j] = acc;
    }
    __syncthreads();
    float num = 0.f; // column threadIdx.x (cols <= 129 < kThreads)
    if (threadIdx.x < cols)
    {
        for (int w2 = 0; w2 < kWarps; ++w2)
        {
            num += partial[w2 * cols + threadIdx.x];
        }
    }
    float const m = warpMaxAbs(threadIdx.x < dh ? num : 0.f);
    if (lane == 0)
    {
        red[warp] = m;
    }
    __syncthreads(); // the partial sums are read; red and the den column are ready below
    if (threadIdx.x == dh)
    {
        partial[0] = num; // den, where every warp can read it
    }
    float maxAbs = 0.f;
    for (int w2 = 0; w2 < kWarps; ++w2)
    {
        maxAbs = fmaxf(maxAbs, red[w2]);
    }
    __syncthreads();
    float const s = readoutScale(partial[0], maxAbs, a.eps);
    if (threadIdx.x < dh)
    {
        T* out = static_cast<T*>(a.out) + (size_t(row) * H + h) * dh;
        out[threadIdx.x] = fromFloat<T>(num * s);
    }
}

template <typename T>
cudaError_t launchCrossRead(rfa_cross_read_args_t const& a, cudaStream_t stream)
{
    size_t const bytes = crossReadSharedBytes(a.dh, a.D);
    static int optedIn = 48 * 1024; // per instantiation: the largest size already allowed
    if (int(bytes) > optedIn)
    {
        cudaError_t const e = cudaFuncSetAttribute(crossReadKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
        if (e != cudaSuccess)
        {
            return e;
        }
        optedIn = int(bytes);
    }
    crossReadKernel<T><<<dim3(a.N, a.H), kThreads, bytes, stream>>>(a);
    return cudaGetLastError();
}

} // namespace
} // namespace rfa

extern "C" {

int rfa_cross_read_check(rfa_cross_read_args_t const* a)
{
    if (a == nullptr || !a->q || !a->sigma || !a->w_tilde || !a->state || !a->out)
    {
        return RFA_ERR_NULL;
    }
    if (a->dtype != RFA_FLOAT32 && a->dtype != RFA_FLOAT16 && a->dtype != RFA_BFLOAT16)
    {
        return RFA_ERR_DTYPE;
    }
    if (a->N < 1 || a->H < 1 || a->rows_per_source < 1 || a->N % a->rows_per_source != 0 || !(a->eps > 0.f)
        || !std::isfinite(a->eps) || (a->kind != RFA_FEATURES_GAUSSIAN && a->kind != RFA_FEATURES_ARCCOS))
    {
        return RFA_ERR_SHAPE;
    }
    if (a->D < 1 || a->D > rfa::kMaxDim || a->dh < 1 || a->dh > rfa::kMaxDim)
    {
        return RFA_ERR_FEATURE_DIMS;
    }
    return RFA_OK;
}

int rfa_cross_read(rfa_cross_read_args_t const* a, cudaStream_t stream)
{
    int const status = rfa_cross_read_check(a);
    if (status != RFA_OK)
    {
        return status;
    }
    cudaError_t e;
    switch (a->dtype)
    {
    case RFA_FLOAT32: e = rfa::launchCrossRead<float>(*a, stream); break;
    case RFA_FLOAT16: e = rfa::launchCrossRead<__half>(*a, stream); break;
    default: e = rfa::launchCrossRead<__nv_bfloat16>(*a, stream); break;
    }
    return e == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

} // extern "C"
