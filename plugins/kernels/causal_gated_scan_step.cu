// Single-step decode of rfa::CausalGatedScan: the state is read once and written once (bandwidth-bound).
//
// One block per (b, h). Threads form R row groups of `cols = Dv + 1` columns (the normaliser z is column
// Dv); thread (r, c) walks rows f = r, r + R, ... of the [F, Dv + 1] state, so a warp reads consecutive
// addresses of a row. Partial q^T S sums are reduced over the row groups in shared memory.
#include "scan_common.cuh"
#include "scan_launch.h"

namespace rfa
{

template <typename T>
__global__ void __launch_bounds__(512) scanStepKernel(StepParams p)
{
    extern __shared__ float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1;
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    float* qs = smem;         // [F]
    float* ks = qs + F;       // [F]
    float* vs = ks + F;       // [cols], vs[Dv] = 1
    float* part = vs + cols;  // [R][cols]
    float* red = part + p.rowGroups * cols; // [32]

    T const* q = static_cast<T const*>(p.q) + (size_t) b * p.qkBatchStride + (size_t) h * F;
    T const* k = static_cast<T const*>(p.k) + (size_t) b * p.qkBatchStride + (size_t) h * F;
    T const* v = static_cast<T const*>(p.v) + (size_t) b * p.vBatchStride + (size_t) h * Dv;
    for (int i = threadIdx.x; i < F; i += blockDim.x)
    {
        qs[i] = toFloat(q[i]);
        ks[i] = toFloat(k[i]);
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
    {
        vs[i] = i < Dv ? toFloat(v[i]) : 1.f;
    }
    float gate = 0.f;
    bool const gated = p.g != nullptr;
    if (gated)
    {
        gate = toFloat(static_cast<T const*>(p.g)[(size_t) b * p.gBatchStride + h]);
    }
    __syncthreads();

    size_t const stateOffset = (size_t) bh * F * cols;
    float const* sIn = p.stateIn ? p.stateIn + stateOffset : nullptr;
    float* sOut = p.stateOut + stateOffset;
    int const r = threadIdx.x / cols, c = threadIdx.x % cols;
    float acc = 0.f;
    if (r < p.rowGroups)
    {
        float const vc = vs[c];
        float const keep = gated ? gate : 1.f;
        float const write = gated ? 1.f - gate : 1.f;
        for (int f = r; f < F; f += p.rowGroups)
        {
            float const s = sIn ? sIn[(size_t) f * cols + c] : 0.f;
            float const sNew = fmaf(keep, s, write * ks[f] * vc);
            sOut[(size_t) f * cols + c] = sNew;
            acc = fmaf(qs[f], sNew, acc);
        }
        part[r * cols + c] = acc;
    }
    __syncthreads();

    // num[c] = sum over row groups; then max |num| over the Dv value columns.
    float localMax = 0.f;
    for (int cc = threadIdx.x; cc < cols; cc += blockDim.x)
    {
        float sum = 0.f;
        for (int rr = 0; rr < p.rowGroups; ++rr)
        {
            sum += part[rr * cols + cc];
        }
        part[cc] = sum; // row group 0's slot now holds the total (each column is owned by one thread here)
        if (cc < Dv)
        {
            localMax = fmaxf(localMax, fabsf(sum));
        }
    }
    localMax = warpMax(localMax);
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
    {
        red[warp] = localMax;
    }
    __syncthreads();
    if (warp == 0)
    {
        float m = lane < (int) (blockDim.x / 32) ? red[lane] : 0.f;
        m = warpMax(m);
        if (lane == 0)
        {
            red[0] = readoutScale(part[Dv], m, p.eps);
        }
    }
    __syncthreads();
    float const scale = red[0];
    T* out = static_cast<T*>(p.out) + (size_t) b * p.vBatchStride + (size_t) h * Dv;
    for (int cc = threadIdx.x; cc < Dv; cc += blockDim.x)
    {
        out[cc] = fromFloat<T>(part[cc] * scale);
    }
}

int stepThreads(int Dv)
{
    return Dv + 1 <= 256 ? 256 : 512;
}

size_t stepSharedBytes(int F, int Dv)
{
    int const cols = Dv + 1;
    int const rowGroups = stepThreads(Dv) / cols;
    return sizeof(float) * (2 * F + cols + rowGroups * cols + 32);
}

template <typename T>
cudaError_t launchStepTyped(StepParams p, cudaStream_t stream)
{
    int const threads = stepThreads(p.Dv);
    p.rowGroups = threads / (p.Dv + 1);
    scanStepKernel<T><<<p.B * p.H, threads, stepSharedBytes(p.F, p.Dv), stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launchStep(StepParams const& p, int dtype, cudaStream_t stream)
{
    switch (dtype)
    {
    case 0: return launchStepTyped<float>(p, stream);
    case 1: return launchStepTyped<__half>(p, stream);
    default: return launchStepTyped<__nv_bfloat16>(p, stream);
    }
}

} // namespace rfa
