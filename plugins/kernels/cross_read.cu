// Fused cross-attention read (cross_read.h). One block per (row, head): the block normalises q, projects it
// on W~[h] diag(sigma) (one thread per projection) and maps the features into shared memory, then one thread
// per state column sums phi_f S[f, j] down the source's fp32 state (consecutive threads, consecutive
// columns: coalesced), and the block applies the bounded readout.
#include "cross_read.h"
#include "feature_map.cuh"
#include "scan_common.cuh"

#include <cmath>

namespace rfa
{
namespace
{

constexpr int kThreads = 128;
constexpr int kMaxDim = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) crossReadKernel(rfa_cross_read_args_t a)
{
    __shared__ float xs[kMaxDim];     // x_hat ⊙ sigma
    __shared__ float phi[2 * kMaxDim]; // the features, as rounded to T
    __shared__ float red[kThreads / 32];
    int const row = blockIdx.x, h = blockIdx.y;
    int const dh = a.dh, D = a.D, H = a.H;
    bool const gaussian = a.kind == RFA_FEATURES_GAUSSIAN;
    int const F = gaussian ? 2 * D : D;
    int const cols = dh + 1;
    T const* q = static_cast<T const*>(a.q) + (size_t(row) * H + h) * dh;
    T const* sigma = static_cast<T const*>(a.sigma) + size_t(h) * dh;
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    float sq = 0.f;
    for (int j = threadIdx.x; j < dh; j += kThreads)
    {
        float const v = toFloat(q[j]);
        sq = fmaf(v, v, sq);
    }
    sq = warpSum(sq);
    if (lane == 0)
    {
        red[warp] = sq;
    }
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w)
    {
        total += red[w];
    }
    float const inv = inverseNorm(total);
    for (int j = threadIdx.x; j < dh; j += kThreads)
    {
        xs[j] = toFloat(q[j]) * inv * toFloat(sigma[j]);
    }
    __syncthreads();
    float const scale = featureScale(gaussian, D);
    T const* w = static_cast<T const*>(a.w_tilde) + size_t(h) * D * dh;
    for (int d = threadIdx.x; d < D; d += kThreads)
    {
        float p = 0.f;
        for (int j = 0; j < dh; ++j)
        {
            p = fmaf(xs[j], toFloat(w[size_t(d) * dh + j]), p);
        }
        float2 const f = featurePair(gaussian, p, scale);
        phi[d] = toFloat(fromFloat<T>(f.x)); // rounded as the composed path's feature tensor is
        if (gaussian)
        {
            phi[D + d] = toFloat(fromFloat<T>(f.y));
        }
    }
    __syncthreads();

    size_t const source = size_t(row / a.rows_per_source);
    float const* S = a.state + (source * H + h) * size_t(F) * cols;
    float num[2] = {0.f, 0.f}; // columns threadIdx.x and threadIdx.x + kThreads (dh <= 128: at most 129 columns)
    for (int f = 0; f < F; ++f)
    {
        float const p = phi[f];
        for (int k = 0; k < 2; ++k)
        {
            int const j = threadIdx.x + k * kThreads;
            if (j < cols)
            {
                num[k] = fmaf(p, S[size_t(f) * cols + j], num[k]);
            }
        }
    }
    float m = 0.f;
    for (int k = 0; k < 2; ++k)
    {
        int const j = threadIdx.x + k * kThreads;
        if (j < dh)
        {
            m = fmaxf(m, fabsf(num[k]));
        }
    }
    __shared__ float den;
    if (threadIdx.x + kThreads == dh)
    {
        den = num[1];
    }
    else if (threadIdx.x == dh)
    {
        den = num[0];
    }
    m = warpMax(m);
    __syncthreads(); // the partial sums of red were read above; den is written
    if (lane == 0)
    {
        red[warp] = m;
    }
    __syncthreads();
    float maxAbs = 0.f;
    for (int w2 = 0; w2 < kThreads / 32; ++w2)
    {
        maxAbs = fmaxf(maxAbs, red[w2]);
    }
    float const s = readoutScale(den, maxAbs, a.eps);
    T* out = static_cast<T*>(a.out) + (size_t(row) * H + h) * dh;
    for (int k = 0; k < 2; ++k)
    {
        int const j = threadIdx.x + k * kThreads;
        if (j < dh)
        {
            out[j] = fromFloat<T>(num[k] * s);
        }
    }
}

template <typename T>
cudaError_t launchCrossRead(rfa_cross_read_args_t const& a, cudaStream_t stream)
{
    crossReadKernel<T><<<dim3(a.N, a.H), kThreads, 0, stream>>>(a);
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
