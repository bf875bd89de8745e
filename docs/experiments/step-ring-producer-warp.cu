// Not built: a replacement for plugins/kernels/causal_gated_scan_step_ring.cu of docs/experiments/step-ring.patch
// (BENCHMARKS.md, "The op's step as persistent blocks ..."), written and compiled, never run on a GPU.
// Single-step decode of rfa::CausalGatedScan on sm_90 as a ring: a few persistent blocks per multiprocessor
// each walk the (b, h) slabs blockIdx.x, blockIdx.x + gridDim.x, ... A producer warp (its lane 0) keeps
// `stages` slabs in flight as bulk copies into a ring of shared-memory slots (mbarrier `full` per slot), waits
// until the other warps have updated a slot (mbarrier `updated`), stores it as one bulk copy and refills it once
// that store has read it, so no consumer warp ever waits on a bulk copy it did not need. The consumers
// synchronise among themselves by a named barrier. The next slab's q, k, v and gate are loaded into registers
// while the current slab is updated. The update and readout are those of scanStepKernel
// (causal_gated_scan_step.cu): the same pass layout, q^T S_new = g q^T S_old + (1 - g) (q . k) [v, 1].
#include "scan_common.cuh"
#include "scan_launch.h"
#include "tma.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace rfa
{

namespace
{

constexpr int kRingMaxInputsPerThread = 4; // F <= 4 x threads q and k entries a thread carries over
constexpr int kRingMaxStages = 8;

// [stages][slab] | full[stages] | updated[stages] | qk[2][F + 1] | vs[2][cols] | part[2][stripeRows * cols] | red[8]
// red: [0..1] q . k, [2..3] max |numerator| (int bits), [4..5] gate, by slab parity
size_t ringFixedBytes(int stages, int F, int Dv, int stripeRows)
{
    int const cols = Dv + 1;
    return size_t(stages) * 16 + sizeof(float) * (4 * (F + 1) + 2 * cols + 2 * stripeRows * cols + 8);
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900 // only the sm_90 kernel body uses them
__device__ __forceinline__ void mbarrierArrive(uint64_t* bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smemAddr(bar)) : "memory");
}

// the block's consumer warps only (the producer warp does not take part)
__device__ __forceinline__ void consumerBarrier(int consumers)
{
    asm volatile("bar.sync 1, %0;\n" ::"r"(consumers) : "memory");
}
#endif

template <typename T, bool kBf16State>
__global__ void __launch_bounds__(kStagedMaxThreads + 32) scanStepRingKernel(StepParams p, int stages)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    using Quad = StateQuad<kBf16State>;
    using Elem = std::conditional_t<kBf16State, __nv_bfloat16, float>;
    extern __shared__ __align__(16) float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1, stripeRows = p.stripeRows;
    int const slabElems = F * cols, slabBytes = slabElems * int(sizeof(Elem)); // a multiple of 16 (F % 16 == 0)
    char* const ring = reinterpret_cast<char*>(smem);
    uint64_t* const full = reinterpret_cast<uint64_t*>(ring + stages * slabBytes);
    uint64_t* const updated = full + stages; // the consumers have updated the slot: the producer stores it
    float2* const qkBuf = reinterpret_cast<float2*>(updated + stages);
    float* const vsBuf = reinterpret_cast<float*>(qkBuf + 2 * (F + 1));
    float* const partBuf = vsBuf + 2 * cols;
    float* const red = partBuf + 2 * stripeRows * cols;

    int const total = p.B * p.H;
    int const mine = int(blockIdx.x) < total ? (total - 1 - int(blockIdx.x)) / int(gridDim.x) + 1 : 0;
    int const t = threadIdx.x, e0 = 4 * t, warp = t / 32, lane = t % 32;
    int const consumers = int(blockDim.x) - 32; // the last warp issues the bulk copies
    int const passThreads = stripeRows * cols / 4;
    int const passes = t < passThreads ? F / stripeRows : 0;
    int const r0 = e0 / cols, c0 = e0 - r0 * cols, wrap = cols - c0;
    bool const gated = p.g != nullptr;
    Elem const* const stateIn = static_cast<Elem const*>(p.stateIn);
    Elem* const stateOut = static_cast<Elem*>(p.stateOut);
    auto slabOf = [&](int j) { return int(blockIdx.x) + j * int(gridDim.x); };
    auto slot = [&](int j) { return ring + (j % stages) * slabBytes; };
    auto issueLoad = [&](int j) {
        uint64_t* const bar = full + j % stages;
        tmaExpectTx(bar, uint32_t(slabBytes));
        bulkLoad(slot(j), stateIn + size_t(slabOf(j)) * slabElems, uint32_t(slabBytes), bar);
    };

    bool const producer = t == consumers; // lane 0 of the last warp
    if (producer)
    {
        for (int s = 0; s < stages; ++s)
        {
            mbarrierInit(full + s, 1);
            mbarrierInit(updated + s, uint32_t(consumers));
        }
        fenceMbarrierInit();
        for (int j = 0; j < stages && j < mine; ++j)
        {
            issueLoad(j);
        }
    }

    // The next slab's inputs, carried in registers from the top of one iteration to its end.
    float qIn[kRingMaxInputsPerThread], kIn[kRingMaxInputsPerThread], vIn = 0.f, gIn = 0.f;
    auto loadInputs = [&](int j) {
        int const bh = slabOf(j), b = bh / p.H, h = bh % p.H;
        T const* const q = static_cast<T const*>(p.q) + size_t(b) * p.qkBatchStride + size_t(h) * F;
        T const* const k = static_cast<T const*>(p.k) + size_t(b) * p.qkBatchStride + size_t(h) * F;
#pragma unroll
        for (int u = 0; u < kRingMaxInputsPerThread; ++u)
        {
            int const i = t + u * consumers;
            if (i < F)
            {
                qIn[u] = toFloat(q[i]);
                kIn[u] = toFloat(k[i]);
            }
        }
        if (t < Dv)
        {
            vIn = toFloat(static_cast<T const*>(p.v)[size_t(b) * p.vBatchStride + size_t(h) * Dv + t]);
        }
        if (gated)
        {
            gIn = toFloat(static_cast<T const*>(p.g)[size_t(b) * p.gBatchStride + h]);
        }
    };
    auto storeInputs = [&](int parity) {
        float2* const qk = qkBuf + parity * (F + 1);
#pragma unroll
        for (int u = 0; u < kRingMaxInputsPerThread; ++u)
        {
            int const i = t + u * consumers;
            if (i < F)
            {
                qk[i] = make_float2(qIn[u], kIn[u]);
            }
        }
        if (t < cols)
        {
            vsBuf[parity * cols + t] = t < Dv ? vIn : 1.f;
        }
        if (t == 0)
        {
            red[2 + parity] = 0.f;
            red[4 + parity] = gIn;
        }
    };
    auto dotInto = [&](int parity) { // warp 0
        float2 const* const qk = qkBuf + parity * (F + 1);
        float dot = 0.f;
        for (int f = lane; f < F; f += 32)
        {
            dot = fmaf(qk[f].x, qk[f].y, dot);
        }
        dot = warpSum(dot);
        if (lane == 0)
        {
            red[parity] = dot;
        }
    };

    if (t < consumers && mine > 0)
    {
        loadInputs(0);
        storeInputs(0);
    }
    if (t == 0)
    {
        qkBuf[F] = qkBuf[2 * F + 1] = make_float2(0.f, 0.f); // padding entries, read by row F - 1's next
    }
    __syncthreads(); // the barriers' initialisation and slab 0's inputs

    if (t >= consumers)
    {
        if (producer)
        {
            for (int j = 0; j < mine; ++j)
            {
                mbarrierWait(updated + j % stages, uint32_t((j / stages) & 1));
                bulkStore(stateOut + size_t(slabOf(j)) * slabElems, slot(j), uint32_t(slabBytes));
                tmaStoreCommit();
                if (j + stages < mine)
                {
                    tmaStoreWaitRead(); // before the slot takes slab j + stages
                    issueLoad(j + stages);
                }
            }
            tmaStoreWaitRead(); // the last stores have read their slots before the block's shared memory goes
        }
        return;
    }
    if (warp == 0 && mine > 0)
    {
        dotInto(0);
    }

    for (int j = 0; j < mine; ++j)
    {
        int const par = j & 1;
        bool const more = j + 1 < mine;
        if (more)
        {
            loadInputs(j + 1);
        }

        float2 const* const qk = qkBuf + par * (F + 1);
        float const* const vs = vsBuf + par * cols;
        float* const part = partBuf + par * stripeRows * cols;
        float const gate = red[4 + par];
        float const keep = gated ? gate : 1.f, write = gated ? 1.f - gate : 1.f;
        float wv[4];
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int m = 0; m < 4; ++m)
        {
            wv[m] = write * vs[c0 + m < cols ? c0 + m : c0 + m - cols];
        }
        Quad* const quads = reinterpret_cast<Quad*>(slot(j));
        mbarrierWait(full + j % stages, uint32_t((j / stages) & 1));
#pragma unroll 1
        for (int u = 0; u < passes; ++u)
        {
            int const row = r0 + u * stripeRows;
            Quad& quad = quads[u * passThreads + t];
            quad = narrowQuad<kBf16State>(stepQuadUpdate(widenQuad(quad), qk[row], qk[row + 1], wrap, keep, wv, acc));
        }
        if (t < passThreads)
        {
#pragma unroll
            for (int m = 0; m < 4; ++m)
            {
                part[e0 + m] = acc[m];
            }
        }
        fenceProxyAsync();
        mbarrierArrive(updated + j % stages);
        consumerBarrier(consumers);

        // scanStepKernel's readout, written out again: as a shared function it changed that kernel's register
        // allocation (a spill in one instance)
        float const qDotK = red[par];
        float localMax = 0.f;
        for (int cc = t; cc < cols; cc += consumers)
        {
            float sum = 0.f;
            for (int rr = 0; rr < stripeRows; ++rr)
            {
                sum += part[rr * cols + cc];
            }
            sum = fmaf(keep, sum, write * qDotK * vs[cc]);
            part[cc] = sum;
            if (cc < Dv)
            {
                localMax = fmaxf(localMax, fabsf(sum));
            }
        }
        localMax = warpMaxAbs(localMax);
        if (lane == 0 && localMax > 0.f)
        {
            atomicMax(reinterpret_cast<int*>(red + 2 + par), __float_as_int(localMax));
        }
        if (more)
        {
            storeInputs(par ^ 1); // the other parity's last readers are behind this iteration's barrier
        }
        consumerBarrier(consumers);

        if (warp == 0 && more)
        {
            dotInto(par ^ 1);
        }
        float const scale = readoutScale(part[Dv], __int_as_float(reinterpret_cast<int const*>(red)[2 + par]), p.eps);
        int const bh = slabOf(j), b = bh / p.H, h = bh % p.H;
        T* const out = static_cast<T*>(p.out) + size_t(b) * p.outBatchStride + size_t(h) * Dv;
        for (int cc = t; cc < Dv; cc += consumers)
        {
            out[cc] = fromFloat<T>(part[cc] * scale);
        }
    }
#else
    __trap(); // stepRingShape launches it on sm_90 and later only
#endif
}

// What the ring's shape depends on, per device (cached: the step may be launched every token).
struct RingDevice
{
    int sms, sharedPerSm, sharedPerBlock;
};

RingDevice ringDevice()
{
    constexpr int kMaxDevices = 64;
    static RingDevice cache[kMaxDevices] = {};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0)
    {
        cudaGetLastError();
        return {};
    }
    RingDevice d = device < kMaxDevices ? cache[device] : RingDevice{};
    if (d.sms == 0)
    {
        if (cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess
            || cudaDeviceGetAttribute(&d.sharedPerSm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess
            || cudaDeviceGetAttribute(&d.sharedPerBlock, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
        {
            cudaGetLastError();
            return {};
        }
        if (device < kMaxDevices)
        {
            cache[device] = d;
        }
    }
    return d;
}

} // namespace

StepRingShape stepRingShape(StepParams const& p)
{
    StepRingShape shape{0, 0, 0, 0};
    int const stripeRows = stepStripeRows(p.Dv);
    int const threads = (stripeRows * (p.Dv + 1) / 4 + 31) / 32 * 32;
    char const* env = std::getenv("RFA_STEP_RING_BLOCKS");
    int const blocksPerSm = env ? std::atoi(env) : 2;
    if (blocksPerSm <= 0 || p.stateInt8 || p.wTilde || !p.stateIn || threads > kStagedMaxThreads
        || p.F > kRingMaxInputsPerThread * threads || !aligned16(p.stateIn) || !aligned16(p.stateOut)
        || deviceMajor() < 9)
    {
        return shape;
    }
    RingDevice const device = ringDevice();
    int const total = p.B * p.H;
    if (device.sms == 0 || total < 2 * blocksPerSm * device.sms) // under two slabs a block: one block per slab
    {
        return shape;
    }
    size_t const slabBytes = size_t(p.F) * (p.Dv + 1) * (p.stateBf16 ? 2 : 4);
    // 1 KB of each block's shared memory is reserved by the runtime
    size_t const budget = std::min<size_t>(size_t(device.sharedPerSm) / blocksPerSm - 1024, size_t(device.sharedPerBlock));
    int stages = kRingMaxStages;
    while (stages >= 2 && size_t(stages) * slabBytes + ringFixedBytes(stages, p.F, p.Dv, stripeRows) > budget)
    {
        --stages;
    }
    if (stages < 2)
    {
        return shape;
    }
    shape.grid = blocksPerSm * device.sms;
    shape.stages = stages;
    shape.threads = threads + 32; // and the producer warp
    shape.sharedBytes = size_t(stages) * slabBytes + ringFixedBytes(stages, p.F, p.Dv, stripeRows);
    return shape;
}

cudaError_t launchStepRing(StepParams p, StepRingShape const& shape, int dtype, cudaStream_t stream)
{
    p.stripeRows = stepStripeRows(p.Dv);
    auto launch = [&](auto kernel) {
        cudaError_t const e
            = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shape.sharedBytes));
        if (e != cudaSuccess)
        {
            return e;
        }
        kernel<<<shape.grid, shape.threads, shape.sharedBytes, stream>>>(p, shape.stages);
        return cudaGetLastError();
    };
    bool const bf16 = p.stateBf16;
    switch (dtype)
    {
    case 0: return bf16 ? launch(scanStepRingKernel<float, true>) : launch(scanStepRingKernel<float, false>);
    case 1: return bf16 ? launch(scanStepRingKernel<__half, true>) : launch(scanStepRingKernel<__half, false>);
    default:
        return bf16 ? launch(scanStepRingKernel<__nv_bfloat16, true>) : launch(scanStepRingKernel<__nv_bfloat16, false>);
    }
}

} // namespace rfa
