// Single-step decode of rfa::CausalGatedScan: the state is read once and written once (bandwidth-bound).
//
// One block per (b, h). Threads form R row groups of `cols = Dv + 1` columns (the normaliser z is column
// Dv); thread (r, c) walks rows f = r, r + R, ... of the [F, Dv + 1] state, so a warp reads consecutive
// addresses of a row. The readout uses q^T S_new = g q^T S_old + (1 - g) (q . k) [v, 1]: numerator and
// normaliser then share the factor (q . k) exactly, as in the chunked kernel, which keeps the ratio accurate
// when q . k nearly cancels. Partial q^T S_old sums are reduced over the row groups in shared memory.
#include "scan_common.cuh"
#include "scan_launch.h"

namespace rfa
{

template <typename T>
__global__ void __launch_bounds__(1024) scanStepKernel(StepParams p)
{
    extern __shared__ float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1;
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    float* qs = smem;         // [F]
    float* ks = qs + F;       // [F]
    float* vs = ks + F;       // [cols], vs[Dv] = 1
    float* part = vs + cols;  // [R][cols]
    float* red = part + p.rowGroups * cols; // [32], then [0] = readout scale, [1] = q . k

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
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0)
    {
        float qk = 0.f;
        for (int f = lane; f < F; f += 32)
        {
            qk = fmaf(qs[f], ks[f], qk);
        }
        qk = warpSum(qk);
        if (lane == 0)
        {
            red[1] = qk;
        }
    }

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
        int const R = p.rowGroups;
        int f = r;
        // Four independent rows per iteration: the loads are issued before the stores (the state may be
        // updated in place, so the compiler cannot reorder them itself); each element is this thread's own.
        for (; f + 3 * R < F; f += 4 * R)
        {
            float s[4];
#pragma unroll
            for (int u = 0; u < 4; ++u)
            {
                s[u] = sIn ? sIn[(size_t) (f + u * R) * cols + c] : 0.f;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u)
            {
                int const row = f + u * R;
                sOut[(size_t) row * cols + c] = fmaf(keep, s[u], write * ks[row] * vc);
                acc = fmaf(qs[row], s[u], acc);
            }
        }
        for (; f < F; f += R)
        {
            float const s = sIn ? sIn[(size_t) f * cols + c] : 0.f;
            sOut[(size_t) f * cols + c] = fmaf(keep, s, write * ks[f] * vc);
            acc = fmaf(qs[f], s, acc);
        }
        part[r * cols + c] = acc;
    }
    __syncthreads();

    // num[c] = keep * (q^T S_old)[c] + write * (q . k) * [v, 1][c]; then max |num| over the Dv value columns.
    float const keep = gated ? gate : 1.f;
    float const write = gated ? 1.f - gate : 1.f;
    float const qk = red[1];
    float localMax = 0.f;
    for (int cc = threadIdx.x; cc < cols; cc += blockDim.x)
    {
        float sum = 0.f;
        for (int rr = 0; rr < p.rowGroups; ++rr)
        {
            sum += part[rr * cols + cc];
        }
        sum = fmaf(keep, sum, write * qk * vs[cc]);
        part[cc] = sum; // row group 0's slot now holds the total (each column is owned by one thread here)
        if (cc < Dv)
        {
            localMax = fmaxf(localMax, fabsf(sum));
        }
    }
    localMax = warpMax(localMax);
    __syncthreads(); // red[1] (q . k) has been read by every thread before red[warp] is overwritten
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

// Few (b, h) blocks (small batches): wide blocks, so each thread walks few rows and the step is short.
// Many blocks: 256 threads, enough blocks per multiprocessor to keep the loads in flight.
int stepThreads(int blocks, int Dv)
{
    int const wide = blocks < 1024 ? 1024 : 256;
    return Dv + 1 <= wide ? wide : 512;
}

size_t stepSharedBytes(int threads, int F, int Dv)
{
    int const cols = Dv + 1;
    int const rowGroups = threads / cols;
    return sizeof(float) * (2 * F + cols + rowGroups * cols + 32);
}

template <typename T>
cudaError_t launchStepTyped(StepParams p, cudaStream_t stream)
{
    int const threads = stepThreads(p.B * p.H, p.Dv);
    p.rowGroups = threads / (p.Dv + 1);
    scanStepKernel<T><<<p.B * p.H, threads, stepSharedBytes(threads, p.F, p.Dv), stream>>>(p);
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
