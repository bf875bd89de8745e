// Residual add + LayerNorm (add_layer_norm.h). One block per row; each thread keeps its columns in registers
// between the add and the two reductions, so a row is read once; 16-byte loads and stores where the width
// and the pointers allow.
#include "add_layer_norm.h"
#include "dependent_launch.cuh"
#include "scan_common.cuh"

namespace rfa
{
namespace
{

constexpr int kThreads = 128;
constexpr int kMaxPerThread = 32;
constexpr int kMaxWidth = kThreads * kMaxPerThread;

// VEC consecutive elements, moved by one vector load or store when VEC * sizeof(T) is 16 bytes
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack
{
    T e[VEC];
};

__device__ float blockSum(float v, float* scratch)
{
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = warpSum(v);
    if (lane == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w)
    {
        total += scratch[w];
    }
    __syncthreads(); // scratch is reused by the next reduction
    return total;
}

// acc[e] += p[e] for VEC consecutive floats, as float4s where VEC allows (p then 16-byte aligned)
template <int VEC>
__device__ __forceinline__ void addFloats(float (&acc)[VEC], float const* p)
{
    if constexpr (VEC % 4 == 0)
    {
#pragma unroll
        for (int i = 0; i < VEC / 4; ++i)
        {
            float4 const f = reinterpret_cast<float4 const*>(p)[i];
            acc[4 * i] += f.x;
            acc[4 * i + 1] += f.y;
            acc[4 * i + 2] += f.z;
            acc[4 * i + 3] += f.w;
        }
    }
    else
    {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
        {
            acc[e] += p[e];
        }
    }
}

// Thread t holds the packs t, t + kThreads, ... of its row (VEC columns each; D % VEC == 0).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) addLayerNormKernel(rfa_add_layer_norm_args_t a)
{
    constexpr int kPacks = kMaxPerThread / VEC;
    using P = Pack<T, VEC>;
    __shared__ float scratch[kThreads / 32];
    int const D = a.D, packs = D / VEC;
    size_t const base = size_t(blockIdx.x) * packs;
    P const* x = static_cast<P const*>(a.x) + base;
    bool const hasY = a.y != nullptr;
    int const splits = a.y_splits > 1 ? a.y_splits : 0;
    P const* y = hasY && !splits ? static_cast<P const*>(a.y) + base : nullptr;
    float const* yParts = splits ? static_cast<float const*>(a.y) + base * VEC : nullptr; // split 0 of the row
    size_t const splitStride = size_t(a.N) * D;
    P const* w = static_cast<P const*>(a.weight);
    P const* b = static_cast<P const*>(a.bias);
    P const* yb = static_cast<P const*>(a.y_bias);
    // Every load first, weight and bias too: the compiler may not move a load ahead of a store it cannot
    // prove disjoint (the sum may alias x), and each such load would cost a memory round trip of its own.
    // Weight and biases are no kernel's output: they load before the wait for the previous kernel.
    P xs[kPacks], ys[kPacks], ws[kPacks], bs[kPacks], ybs[kPacks];
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
    {
        int const c = threadIdx.x + j * kThreads;
        if (c < packs)
        {
            ws[j] = w[c];
            if (b)
            {
                bs[j] = b[c];
            }
            if (yb)
            {
                ybs[j] = yb[c];
            }
        }
    }
    waitForPreviousKernel();
    allowNextKernel();
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
    {
        int const c = threadIdx.x + j * kThreads;
        if (c < packs)
        {
            xs[j] = x[c];
            if (y)
            {
                ys[j] = y[c];
            }
            else if (splits)
            {
                float t[VEC] = {};
                for (int s = 0; s < splits; ++s)
                {
                    addFloats<VEC>(t, yParts + s * splitStride + size_t(c) * VEC);
                }
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                {
                    ys[j].e[e] = fromFloat<T>(yb ? t[e] + toFloat(ybs[j].e[e]) : t[e]);
                }
            }
        }
    }
    float v[kPacks][VEC];
    float partial = 0.f;
    P* sum = a.y ? static_cast<P*>(a.sum) + base : nullptr;
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
    {
        int const c = threadIdx.x + j * kThreads;
        if (c < packs)
        {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
            {
                if (hasY)
                {
                    xs[j].e[e] = fromFloat<T>(toFloat(xs[j].e[e]) + toFloat(ys[j].e[e]));
                }
                v[j][e] = toFloat(xs[j].e[e]);
                partial += v[j][e];
            }
            if (hasY)
            {
                sum[c] = xs[j];
            }
        }
    }
    float const mean = blockSum(partial, scratch) / D;
    partial = 0.f;
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
    {
        if (threadIdx.x + j * kThreads < packs)
        {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
            {
                float const d = v[j][e] - mean;
                partial = fmaf(d, d, partial);
            }
        }
    }
    float const rstd = rsqrtf(blockSum(partial, scratch) / D + a.eps);
    P* out = static_cast<P*>(a.out) + base;
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
    {
        int const c = threadIdx.x + j * kThreads;
        if (c < packs)
        {
            P o;
#pragma unroll
            for (int e = 0; e < VEC; ++e)
            {
                o.e[e] = fromFloat<T>(fmaf((v[j][e] - mean) * rstd, toFloat(ws[j].e[e]), b ? toFloat(bs[j].e[e]) : 0.f));
            }
            out[c] = o;
        }
    }
}

template <typename T>
cudaError_t launchAddLayerNorm(rfa_add_layer_norm_args_t const& a, cudaStream_t stream)
{
    constexpr int kVec = 16 / sizeof(T);
    bool const vector = a.D % kVec == 0 && aligned16(a.x) && aligned16(a.y) && aligned16(a.weight)
        && aligned16(a.bias) && aligned16(a.sum) && aligned16(a.out) && aligned16(a.y_bias);
    return launchDependent(vector ? addLayerNormKernel<T, kVec> : addLayerNormKernel<T, 1>, a.N, kThreads, 0, stream, a);
}

} // namespace
} // namespace rfa

extern "C" {

int rfa_add_layer_norm_check(rfa_add_layer_norm_args_t const* a)
{
    if (a == nullptr || !a->x || !a->weight || !a->out || (a->y && !a->sum))
    {
        return RFA_ERR_NULL;
    }
    if (a->dtype != RFA_FLOAT32 && a->dtype != RFA_FLOAT16 && a->dtype != RFA_BFLOAT16)
    {
        return RFA_ERR_DTYPE;
    }
    if (a->N < 1 || a->D < 1 || a->D > rfa::kMaxWidth || !(a->eps >= 0.f) || a->y_splits < 0 || a->y_splits > 64)
    {
        return RFA_ERR_NORM_SHAPE;
    }
    bool const partials = a->y_splits > 1;
    if (partials && !a->y)
    {
        return RFA_ERR_NULL;
    }
    if (!partials && a->y_bias)
    {
        return RFA_ERR_NORM_SHAPE;
    }
    return RFA_OK;
}

int rfa_add_layer_norm(rfa_add_layer_norm_args_t const* a, cudaStream_t stream)
{
    int const status = rfa_add_layer_norm_check(a);
    if (status != RFA_OK)
    {
        return status;
    }
    cudaError_t e;
    switch (a->dtype)
    {
    case RFA_FLOAT32: e = rfa::launchAddLayerNorm<float>(*a, stream); break;
    case RFA_FLOAT16: e = rfa::launchAddLayerNorm<__half>(*a, stream); break;
    default: e = rfa::launchAddLayerNorm<__nv_bfloat16>(*a, stream); break;
    }
    return e == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

} // extern "C"
