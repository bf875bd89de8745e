// Single-step decode of rfa::CausalGatedScan: the state is read once and written once (bandwidth-bound).
//
// One block per (b, h); the state moves as float4s (whole 16-byte transactions although a row of Dv + 1
// floats is not 16-byte aligned), each thread's four lanes fixed to four columns (the normaliser z is
// column Dv). The readout uses q^T S_new = g q^T S_old + (1 - g) (q . k) [v, 1]: numerator and normaliser
// then share the factor (q . k) exactly, as in the chunked kernel, which keeps the ratio accurate when
// q . k nearly cancels. Partial q^T S_old sums are reduced over the rows of a pass in shared memory.
#include "scan_common.cuh"
#include "scan_launch.h"

namespace rfa
{

// kMaxThreads / kMinBlocks: launch bounds. 320 / 3 for Dv <= 64 (three blocks per multiprocessor keep
// enough loads in flight: 82 µs against 92 µs with two at B256 on the H200), 512 for Dv <= 112, 1024 beyond.
template <typename T, int kMaxThreads, int kMinBlocks>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks) scanStepKernel(StepParams p)
{
    extern __shared__ float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1;
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    float* qs = smem;         // [F]
    float* ks = qs + F;       // [F]
    float* vs = ks + F;       // [cols], vs[Dv] = 1
    float* part = vs + cols;  // [stripeRows][cols]
    float* red = part + p.stripeRows * cols; // [32], then [0] = readout scale, [1] = q . k

    // The [F, Dv + 1] state of one (b, h) is F * (Dv + 1) contiguous floats, a multiple of 4 (F % 16 == 0):
    // thread t owns float4 number t of every pass of passThreads float4s. A pass covers exactly
    // stripeRows = 4 * passThreads / (Dv + 1) rows, so each of the thread's four lanes stays in one column
    // for the whole walk and its q^T S_old partial sum needs no exchange until the end.
    size_t const stateOffset = (size_t) bh * F * cols;
    float4 const* sIn = p.stateIn ? reinterpret_cast<float4 const*>(p.stateIn + stateOffset) : nullptr;
    float4* sOut = reinterpret_cast<float4*>(p.stateOut + stateOffset);
    int const stripeRows = p.stripeRows;
    int const passThreads = stripeRows * cols / 4; // float4s per pass; the block may have up to 31 more threads
    int const passes = threadIdx.x < passThreads ? F / stripeRows : 0;
    int const t = threadIdx.x, e0 = 4 * t;
    constexpr int kBatch = 8;
    float4 s[kBatch];
    auto loadBatch = [&](int base) {
        // All loads of a batch are issued before any store: the state may be updated in place.
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
        {
            if (base + u < passes)
            {
                s[u] = sIn ? sIn[(size_t) (base + u) * passThreads + t] : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
    };
    loadBatch(0); // before the q, k, v loads: the two latencies overlap

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

    float const keep = gated ? gate : 1.f;
    float const write = gated ? 1.f - gate : 1.f;
    int row0[4];
    float wv[4];
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < 4; ++m)
    {
        row0[m] = (e0 + m) / cols;
        wv[m] = write * vs[(e0 + m) % cols];
    }
    for (int base = 0; base < passes; base += kBatch)
    {
        if (base > 0)
        {
            loadBatch(base);
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
        {
            if (base + u < passes)
            {
                int const rowOffset = (base + u) * stripeRows;
                float const old[4] = {s[u].x, s[u].y, s[u].z, s[u].w};
                float upd[4];
#pragma unroll
                for (int m = 0; m < 4; ++m)
                {
                    int const row = row0[m] + rowOffset;
                    upd[m] = fmaf(keep, old[m], ks[row] * wv[m]);
                    acc[m] = fmaf(qs[row], old[m], acc[m]);
                }
                sOut[(size_t) (base + u) * passThreads + t] = make_float4(upd[0], upd[1], upd[2], upd[3]);
            }
        }
    }
    if (t < passThreads)
    {
#pragma unroll
        for (int m = 0; m < 4; ++m)
        {
            part[e0 + m] = acc[m]; // element e0 + m of a pass: row (e0 + m) / cols of the stripe, its column
        }
    }
    __syncthreads();

    // num[c] = keep * (q^T S_old)[c] + write * (q . k) * [v, 1][c]; then max |num| over the Dv value columns.
    float const qk = red[1];
    float localMax = 0.f;
    for (int cc = threadIdx.x; cc < cols; cc += blockDim.x)
    {
        float sum = 0.f;
        for (int rr = 0; rr < p.stripeRows; ++rr)
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

// A pass of the block is stripeRows = 4k whole rows of the state (k * (Dv + 1) float4s, k = 4 or 2); F is a
// multiple of 16, so of stripeRows. The block is rounded up to whole warps for the shuffles.
int stepStripeRows(int Dv)
{
    return 4 * (Dv + 1) <= 1024 ? 16 : 8;
}

size_t stepSharedBytes(int stripeRows, int F, int Dv)
{
    int const cols = Dv + 1;
    return sizeof(float) * (2 * F + cols + stripeRows * cols + 32);
}

template <typename T>
cudaError_t launchStepTyped(StepParams p, cudaStream_t stream)
{
    p.stripeRows = stepStripeRows(p.Dv);
    int const threads = (p.stripeRows * (p.Dv + 1) / 4 + 31) / 32 * 32;
    size_t const bytes = stepSharedBytes(p.stripeRows, p.F, p.Dv);
    if (threads <= 320)
    {
        scanStepKernel<T, 320, 3><<<p.B * p.H, threads, bytes, stream>>>(p);
    }
    else if (threads <= 512)
    {
        scanStepKernel<T, 512, 1><<<p.B * p.H, threads, bytes, stream>>>(p);
    }
    else
    {
        scanStepKernel<T, 1024, 1><<<p.B * p.H, threads, bytes, stream>>>(p);
    }
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
