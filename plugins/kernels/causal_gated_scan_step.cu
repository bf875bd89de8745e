// Single-step decode of rfa::CausalGatedScan: the state is read once and written once (bandwidth-bound).
//
// One block per (b, h); the state moves as float4s (whole 16-byte transactions although a row of Dv + 1
// floats is not 16-byte aligned), each thread's four lanes fixed to four columns (the normaliser z is column
// Dv). For Dv <= 64 the block stages its whole state slab in shared memory with cp.async: the bytes in flight
// then cost no registers and five blocks fit on a multiprocessor. On sm_90 the op's kernel (not the decode
// prologue's) stores the updated slab as one bulk copy from shared memory, and each block asks L2 for the
// slab of a block about one multiprocessor count after it (kBulkSlabCopies). Larger Dv hold the slab in
// registers in batches. The readout uses q^T S_new = g q^T S_old + (1 - g) (q . k) [v, 1]: numerator and
// normaliser then share the factor (q . k) exactly, as in the chunked kernel, which keeps the ratio accurate
// when q . k nearly cancels. Partial q^T S_old sums are reduced over the rows of a pass in shared memory.
#include "decode_prologue.cuh"
#include "dependent_launch.cuh"
#include "scan_common.cuh"
#include "timeline.cuh"
#include "scan_launch.h"
#include "tma.cuh"

#include <cstdint>
#include <type_traits>

namespace rfa
{

constexpr int kStagedMaxThreads = 288; // Dv <= 64 with 16-row passes
// The op's step on a bf16 state: its slab is half the shared memory, so 7 blocks of 288 threads fit a
// multiprocessor at 32 registers (5: 40). Not the decode prologue's kernel, which spills at 32 and was 5%
// slower in the model's B64 step (BENCHMARKS.md).
constexpr int kStagedBf16MinBlocks = 7;

// The staged slab's traffic on sm_90 (measurements: BENCHMARKS.md, "Step kernel design choices"):
// - the loads go out as 128-byte-aligned warp requests with a whole-line L2 hint (a pass of 16 rows is
//   4160 bytes, so the threads' own float4s left every other pass's warps straddling lines): the block then
//   waits at a barrier before reading what other threads copied;
// - the updated slab is stored by one bulk copy rather than by the threads' float4 stores;
// - thread 0 asks L2 for the slab of block bh + 1.25 x (multiprocessors), which starts a little more than
//   one block per multiprocessor later, so that block's copies meet lines already fetched as one dense
//   request (much further ahead thrashes L2);
// - in long grids the first wave's rows of blocks start their loads 1 us apart.
// Before sm_90, and in the decode prologue's kernel, each thread copies and stores its own float4s.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
constexpr bool kBulkSlabCopies = true;
#else
constexpr bool kBulkSlabCopies = false;
#endif

// The op's step (kBulkSlabCopies): the blocks resident from the start (kResident per multiprocessor, `sms`
// of them) would ask for their slabs at once and finish together, so the k-th row of them waits k us. Only in
// grids of four such waves or more (measured at B256, 6.2 waves), where those few us are a small share.
template <int kResident>
__device__ __forceinline__ void staggerFirstWave(unsigned sms)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    if (gridDim.x >= 4 * kResident * sms && blockIdx.x < kResident * sms)
    {
        __nanosleep(1000u * (blockIdx.x / sms));
    }
#endif
}

// kMaxThreads / kMinBlocks: launch bounds. Staged (Dv <= 64): 288 / 5 (fewer blocks spilled registers or
// slowed the in-place step: BENCHMARKS.md); 512 for Dv <= 112, 1024 beyond.
// kMapFeatures: the decode prologue of rfa_decode_attention_step (raw q, k and gate logits in, features and
// gate made here while the state loads are in flight), otherwise the op's inputs as they are.
// Four consecutive state elements as stored: a float4 (fp32 state) or four bf16 in 8 bytes.
template <bool kBf16State>
using StateQuad = std::conditional_t<kBf16State, uint2, float4>;

__device__ __forceinline__ float4 widenQuad(float4 x)
{
    return x;
}

__device__ __forceinline__ float4 widenQuad(uint2 x)
{
    __nv_bfloat162 const lo = *reinterpret_cast<__nv_bfloat162 const*>(&x.x);
    __nv_bfloat162 const hi = *reinterpret_cast<__nv_bfloat162 const*>(&x.y);
    float2 const a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

template <bool kBf16State>
__device__ __forceinline__ StateQuad<kBf16State> narrowQuad(float4 x)
{
    if constexpr (kBf16State)
    {
        __nv_bfloat162 const lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
        return make_uint2(*reinterpret_cast<unsigned const*>(&lo), *reinterpret_cast<unsigned const*>(&hi));
    }
    else
    {
        return x;
    }
}

// kBf16State: the state is bf16 storage. Staged, its slab holds the bf16 quads as stored; in the bulk path the
// updated quads go back into their slots and the slab is stored whole, as for fp32. Otherwise each thread
// copies its own quads by 8-byte cp.async and stores them itself.
template <typename T, int kMaxThreads, int kMinBlocks, bool kStaged, bool kMapFeatures, bool kBf16State = false>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks) scanStepKernel(StepParams p)
{
    using Quad = StateQuad<kBf16State>;
    using Elem = std::conditional_t<kBf16State, __nv_bfloat16, float>;
    // Not in the decode prologue's kernel: its blocks launch early, beside the q/k/v GEMM before them, and
    // there the prefetch and the bulk store made the model's step slower (BENCHMARKS.md).
    constexpr bool kBulk = kStaged && kBulkSlabCopies && !kMapFeatures;
    extern __shared__ __align__(16) float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1;
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    // staged: [F * cols] state slab first (16-byte aligned for cp.async)
    float4* const slab = reinterpret_cast<float4*>(smem);
    Quad* const quadSlab = reinterpret_cast<Quad*>(smem); // the same slab as stored (bf16: half the bytes)
    int const slabBytes = F * cols * int(sizeof(Elem)); // a multiple of 16 (F % 16 == 0)
    float* const fixed = kStaged ? smem + slabBytes / 4 : smem;
    float2* qk = reinterpret_cast<float2*>(fixed); // [F + 1] (q_f, k_f); entry F only pads the row + 1 read
    float* vs = fixed + 2 * (F + 1);                // [cols], vs[Dv] = 1
    // [stripeRows][cols] partial sums: not in the staged slab, which the bulk store may still be reading
    float* part = vs + cols;
    float* red = part + p.stripeRows * cols; // [32]: [1] = q . k, [2] = max |numerator| (as int bits)
    // kMapFeatures: [2][Dv] x_hat ⊙ sigma of q and k, then W~[h] (not with p.proj); both 16-byte aligned
    // (Dv % 16 == 0)
    float* xs = smem + (int(red - smem) + 32 + 3) / 4 * 4;
    T* wsm = reinterpret_cast<T*>(xs + 2 * Dv);
    if (threadIdx.x == 0)
    {
        red[2] = 0.f; // before the first barrier
    }
    unsigned long long* const timeline
        = kMapFeatures && p.timeline && p.overlapStateLoad ? p.timeline + (size_t) bh * kStepTimelineFields : nullptr;
    if (timeline != nullptr && threadIdx.x == 0)
    {
        timeline[0] = globalTimer();
    }
    stampCycles(timeline, 1);
    bool const nextAtStart = kMapFeatures && allowsNextKernelAtStart(p.allowNextEarly);
    if (nextAtStart)
    {
        allowNextKernel();
    }

    // The [F, Dv + 1] state of one (b, h) is F * (Dv + 1) contiguous floats, a multiple of 4 (F % 16 == 0):
    // thread t owns float4 number t of every pass of passThreads float4s. A pass covers exactly
    // stripeRows = 4 * passThreads / (Dv + 1) rows, so each of the thread's four lanes stays in one column
    // for the whole walk and its q^T S_old partial sum needs no exchange until the end.
    size_t const stateOffset = (size_t) bh * F * cols;
    Quad const* sIn = p.stateIn ? reinterpret_cast<Quad const*>(static_cast<Elem const*>(p.stateIn) + stateOffset) : nullptr;
    Quad* sOut = reinterpret_cast<Quad*>(static_cast<Elem*>(p.stateOut) + stateOffset);
    int const stripeRows = p.stripeRows;
    int const passThreads = stripeRows * cols / 4; // float4s per pass; the block may have up to 31 more threads
    int const passes = threadIdx.x < passThreads ? F / stripeRows : 0;
    int const t = threadIdx.x, e0 = 4 * t;
    constexpr int kBatch = kStaged ? 1 : (kMaxThreads > 512 ? 4 : 8); // 64 registers at 1024 threads
    float4 s[kBatch];
    auto loadBatch = [&](int base) {
        // All loads of a batch are issued before any store: the state may be updated in place.
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
        {
            if (base + u < passes)
            {
                s[u] = sIn ? widenQuad(sIn[(size_t) (base + u) * passThreads + t]) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
    };
    if constexpr (kMapFeatures)
    {
        if (!p.proj)
        {
            stageRandomMatrix<T>(p, h, wsm);
        }
    }
    // Either way the state loads go out before the q, k, v loads: the two latencies overlap.
    if constexpr (kStaged && kMapFeatures)
    {
        if (p.overlapStateLoad)
        {
            staggerEarlyStateLoad();
        }
    }
    if constexpr (kStaged)
    {
        unsigned const sms = kBulk ? multiprocessorCount() : 0u;
        if constexpr (kBulk)
        {
            staggerFirstWave<kMinBlocks>(sms);
            // 16 bytes i by thread i mod blockDim: every warp copies 512 bytes from a 128-byte boundary where
            // F is a multiple of 32 (fp32; 64 for bf16) (a slab is F (Dv + 1) elements, Dv + 1 odd; otherwise
            // every other slab starts 64 bytes past one).
            int const slabFloat4s = slabBytes / 16;
            float4 const* const slabIn = reinterpret_cast<float4 const*>(sIn);
            for (int i = threadIdx.x; i < slabFloat4s; i += blockDim.x)
            {
                if (sIn)
                {
                    cpAsync16Line(slab + i, slabIn + i);
                }
                else
                {
                    slab[i] = make_float4(0.f, 0.f, 0.f, 0.f);
                }
            }
        }
        else
        {
            // each thread copies exactly the float4s it later reads, so no barrier guards them
            for (int u = 0; u < passes; ++u)
            {
                if constexpr (kBf16State)
                {
                    if (sIn)
                    {
                        cpAsync8(quadSlab + u * passThreads + t, sIn + (size_t) u * passThreads + t);
                    }
                    else
                    {
                        quadSlab[u * passThreads + t] = make_uint2(0u, 0u);
                    }
                }
                else if (sIn)
                {
                    cpAsync16(slab + u * passThreads + t, sIn + (size_t) u * passThreads + t, true);
                }
                else
                {
                    slab[u * passThreads + t] = make_float4(0.f, 0.f, 0.f, 0.f);
                }
            }
        }
        cpAsyncCommit();
        if constexpr (kBulk)
        {
            int const ahead = bh + (int) (sms + sms / 4);
            if (threadIdx.x == 0 && sIn && ahead < (int) gridDim.x)
            {
                prefetchL2(static_cast<Elem const*>(p.stateIn) + (size_t) ahead * F * cols, slabBytes);
            }
        }
    }
    else
    {
        loadBatch(0);
    }
    stampCycles(timeline, 2);

    if constexpr (kMapFeatures)
    {
        // Launched early (p.overlapStateLoad) the state and W~ are already on their way; q, k, v, the gate
        // logits and the keep mask come from the kernels before this one.
        waitForPreviousKernel();
    }
    stampCycles(timeline, 3);
    int const headQK = kMapFeatures ? Dv : F; // elements of one head in q and k
    T const* q = static_cast<T const*>(p.q) + (size_t) b * p.qkBatchStride + (size_t) h * headQK;
    T const* k = static_cast<T const*>(p.k) + (size_t) b * p.qkBatchStride + (size_t) h * headQK;
    T const* v = static_cast<T const*>(p.v) + (size_t) b * p.vBatchStride + (size_t) h * Dv;
    if constexpr (!kMapFeatures)
    {
        for (int i = threadIdx.x; i <= F; i += blockDim.x)
        {
            qk[i] = i < F ? make_float2(toFloat(q[i]), toFloat(k[i])) : make_float2(0.f, 0.f);
        }
    }
    float gate = 0.f;
    bool const gated = p.g != nullptr;
    bool masked = false;
    if constexpr (kMapFeatures)
    {
        masked = mapDecodeInputs<T, kStaged ? 1 : 0>(p, b, h, q, k, v, qk, vs, xs, wsm, gate);
    }
    else
    {
        for (int i = threadIdx.x; i < cols; i += blockDim.x)
        {
            vs[i] = i < Dv ? toFloat(v[i]) : 1.f;
        }
        if (gated)
        {
            gate = toFloat(static_cast<T const*>(p.g)[(size_t) b * p.gBatchStride + h]);
        }
    }
    __syncthreads();
    stampCycles(timeline, 4);
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0)
    {
        float dot = 0.f;
        for (int f = lane; f < F; f += 32)
        {
            dot = fmaf(qk[f].x, qk[f].y, dot);
        }
        dot = warpSum(dot);
        if (lane == 0)
        {
            red[1] = dot;
        }
    }

    // a masked entry (decode prologue) keeps its state: as k = 0 and g = 1 in the model
    float const keep = masked ? 1.f : (gated ? gate : 1.f);
    float const write = masked ? 0.f : (gated ? 1.f - gate : 1.f);
    // The thread's first lane sits at row r0, column c0 of the pass; lanes m >= wrap continue on row r0 + 1.
    int const r0 = e0 / cols, c0 = e0 - r0 * cols, wrap = cols - c0;
    float wv[4];
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < 4; ++m)
    {
        wv[m] = write * vs[c0 + m < cols ? c0 + m : c0 + m - cols];
    }
    auto update = [&](float4 const& cur, int pass) {
        int const row = r0 + pass * stripeRows;
        float2 const here = qk[row], next = qk[row + 1];
        float const old[4] = {cur.x, cur.y, cur.z, cur.w};
        float upd[4];
#pragma unroll
        for (int m = 0; m < 4; ++m)
        {
            float2 const x = m < wrap ? here : next;
            upd[m] = fmaf(keep, old[m], x.y * wv[m]);
            acc[m] = fmaf(x.x, old[m], acc[m]);
        }
        float4 const result = make_float4(upd[0], upd[1], upd[2], upd[3]);
        if constexpr (kBulk)
        {
            quadSlab[pass * passThreads + t] = narrowQuad<kBf16State>(result); // the slot this thread has just read
        }
        else
        {
            sOut[(size_t) pass * passThreads + t] = narrowQuad<kBf16State>(result);
        }
    };
    if constexpr (kStaged)
    {
        cpAsyncWait<0>();
        if constexpr (kBulk)
        {
            __syncthreads(); // every thread's copies
        }
        stampCycles(timeline, 5);
#pragma unroll 1 // unrolled, it spills a register and is slower
        for (int u = 0; u < passes; ++u)
        {
            update(widenQuad(quadSlab[u * passThreads + t]), u);
        }
        if constexpr (kBulk)
        {
            fenceProxyAsync();
            __syncthreads();
            if (threadIdx.x == 0)
            {
                bulkStore(sOut, slab, slabBytes);
                tmaStoreCommit();
            }
        }
    }
    else
    {
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
                    update(s[u], base + u);
                }
            }
        }
    }
    if constexpr (kMapFeatures)
    {
        // Not earlier in a longer grid: the next kernel's blocks would take room from this one's last blocks.
        if (!nextAtStart)
        {
            allowNextKernel();
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
    stampCycles(timeline, 6);

    // num[c] = keep * (q^T S_old)[c] + write * (q . k) * [v, 1][c]; then max |num| over the Dv value columns.
    float const qDotK = red[1];
    float localMax = 0.f;
    for (int cc = threadIdx.x; cc < cols; cc += blockDim.x)
    {
        float sum = 0.f;
        for (int rr = 0; rr < p.stripeRows; ++rr)
        {
            sum += part[rr * cols + cc];
        }
        sum = fmaf(keep, sum, write * qDotK * vs[cc]);
        part[cc] = sum; // row group 0's slot now holds the total (each column is owned by one thread here)
        if (cc < Dv)
        {
            localMax = fmaxf(localMax, fabsf(sum));
        }
    }
    // the maximum as an integer over the bits of non-negative floats: one barrier fewer than a second round of
    // warp reductions
    localMax = warpMaxAbs(localMax);
    if (lane == 0 && localMax > 0.f)
    {
        atomicMax(reinterpret_cast<int*>(red + 2), __float_as_int(localMax));
    }
    __syncthreads();
    float const scale = readoutScale(part[Dv], __int_as_float(reinterpret_cast<int const*>(red)[2]), p.eps);
    T* out = static_cast<T*>(p.out) + (size_t) b * p.outBatchStride + (size_t) h * Dv;
    for (int cc = threadIdx.x; cc < Dv; cc += blockDim.x)
    {
        out[cc] = fromFloat<T>(part[cc] * scale);
    }
    if constexpr (kBulk)
    {
        if (threadIdx.x == 0)
        {
            tmaStoreWaitRead(); // the bulk store has read the slab before the block's shared memory goes
        }
    }
    stampCycles(timeline, 7);
    if (timeline != nullptr && threadIdx.x == 0)
    {
        timeline[8] = globalTimer();
    }
}

// A pass of the block is stripeRows = 4k whole rows of the state (k * (Dv + 1) float4s, k = 4 or 2); F is a
// multiple of 16, so of stripeRows. The block is rounded up to whole warps for the shuffles.
int stepStripeRows(int Dv)
{
    return 4 * (Dv + 1) <= 1024 ? 16 : 8;
}


// The layout of scanStepKernel: [slab (staged) | qk | vs | part | red | xs (mapFeatures) | W~[h] (randomMatrix)].
size_t stepSharedBytes(bool staged, int stripeRows, int F, int Dv, int D, size_t elemBytes, bool mapFeatures,
    bool randomMatrix, size_t stateBytes)
{
    int const cols = Dv + 1;
    size_t const fixedFloats = (staged ? F * cols * stateBytes / 4 : 0) + 2 * (F + 1) + cols + stripeRows * cols + 32;
    return mapFeatures ? withDecodePrologueBytes(fixedFloats, Dv, D, elemBytes, randomMatrix)
                       : sizeof(float) * fixedFloats;
}

template <typename T, bool kMapFeatures>
cudaError_t launchStepTyped(StepParams p, cudaStream_t stream)
{
    p.stripeRows = stepStripeRows(p.Dv);
    int const threads = (p.stripeRows * (p.Dv + 1) / 4 + 31) / 32 * 32;
    bool const staged = threads <= kStagedMaxThreads;
    size_t const bytes = stepSharedBytes(staged, p.stripeRows, p.F, p.Dv, p.D, sizeof(T), kMapFeatures,
        kMapFeatures && !p.proj, p.stateBf16 ? 2 : 4);
    // Above the 48 KB default (F = 256 staged: 67 KB; a large W~ in the decode prologue) opt in: a cheap
    // host-side call, made for the kernel about to run.
    auto launch = [&](auto kernel) {
        if (bytes > 48 * 1024)
        {
            cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
            if (e != cudaSuccess)
            {
                return e;
            }
        }
        if (kMapFeatures && p.overlapStateLoad)
        {
            return launchDependent(kernel, p.B * p.H, threads, bytes, stream, p);
        }
        kernel<<<p.B * p.H, threads, bytes, stream>>>(p);
        return cudaSuccess;
    };
    cudaError_t const e = p.stateBf16
        ? (staged            ? launch(scanStepKernel<T, kStagedMaxThreads, kMapFeatures ? 5 : kStagedBf16MinBlocks, true,
                                   kMapFeatures, true>)
              : threads <= 512 ? launch(scanStepKernel<T, 512, 1, false, kMapFeatures, true>)
                               : launch(scanStepKernel<T, 1024, 1, false, kMapFeatures, true>))
        : staged         ? launch(scanStepKernel<T, kStagedMaxThreads, 5, true, kMapFeatures>)
        : threads <= 512 ? launch(scanStepKernel<T, 512, 1, false, kMapFeatures>)
                         : launch(scanStepKernel<T, 1024, 1, false, kMapFeatures>);
    if (e != cudaSuccess)
    {
        return e;
    }
    return cudaGetLastError();
}

cudaError_t launchStep(StepParams const& p, int dtype, cudaStream_t stream)
{
    if (p.stateInt8)
    {
        return launchStepInt8(p, dtype, stream);
    }
    switch (dtype)
    {
    case 0: return launchStepTyped<float, false>(p, stream);
    case 1: return launchStepTyped<__half, false>(p, stream);
    default: return launchStepTyped<__nv_bfloat16, false>(p, stream);
    }
}

cudaError_t launchDecodeStep(StepParams const& p, int dtype, cudaStream_t stream)
{
    if (p.stateInt8)
    {
        return launchDecodeStepInt8(p, dtype, stream);
    }
    switch (dtype)
    {
    case 0: return launchStepTyped<float, true>(p, stream);
    case 1: return launchStepTyped<__half, true>(p, stream);
    default: return launchStepTyped<__nv_bfloat16, true>(p, stream);
    }
}

} // namespace rfa
