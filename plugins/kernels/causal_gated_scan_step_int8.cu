// Single-step decode of rfa::CausalGatedScan with an int8-row state (docs/op_contract.md, "State dtype"):
// [B, H, F, Dv + 2] int8, each row Dv + 1 codes and a power-of-two exponent, about a quarter of the fp32 bytes.
//
// Storing a row needs that row's largest updated entry, so a warp owns whole rows (lane j holds columns
// j + 32 i) and finds it with one shuffle reduction; the fp32 kernel's float4 walk across row boundaries does
// not fit. The block's whole [F, Dv + 2] slab is copied into shared memory first (16-byte cp.async, before
// q, k and v are read), so all its bytes are in flight at once; warps update rows there, and the block stores
// the slab back whole in 16-byte stores. One block
// per (b, h); q^T S_old partial sums are reduced over the warps in shared memory, and the readout is the fp32
// kernel's: q^T S_new = g q^T S_old + (1 - g) (q . k) [v, 1].
// With the decode prologue (kMapFeatures: rfa_decode_attention_step) the block also maps q and k to their
// features and applies the gate's sigmoid and the keep mask, as the fp32/bf16 step kernel does.
#include "decode_prologue.cuh"
#include "dependent_launch.cuh"
#include "int8_rows.cuh"
#include "scan_common.cuh"
#include "scan_launch.h"

#include <cstdint>

namespace rfa
{

namespace
{

constexpr int kInt8Warps = 8;
constexpr int kRowsPerWarp = 4;
static_assert(16 % kRowsPerWarp == 0, "F % 16 == 0: a warp's rows never run past the slab");
constexpr int kMaxColsPerLane = 9; // Dv + 1 <= 257 columns over 32 lanes
constexpr int kMaxDecodeColsPerLane = 5; // the fused step: Dv = dh <= 128

// kPerLane = ceil((Dv + 1) / 32) columns per lane: registers sized to the row, so short rows leave room
// for more resident blocks.
template <typename T, int kPerLane, bool kMapFeatures>
__global__ void __launch_bounds__(kInt8Warps * 32) scanStepInt8Kernel(StepParams p)
{
    extern __shared__ __align__(16) float smem[];
    int const F = p.F, Dv = p.Dv, cols = Dv + 1, rowBytes = Dv + 2;
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // [F * rowBytes] the state slab as stored (a multiple of 16 bytes: F % 16 == 0), then the fixed part
    int8_t* const slab = reinterpret_cast<int8_t*>(smem);
    float2* const qk = reinterpret_cast<float2*>(smem + F * rowBytes / 4); // [F + 1] (q_f, k_f); F: padding
    float* const vs = reinterpret_cast<float*>(qk + F + 1); // [cols], vs[Dv] = 1
    float* const part = vs + cols;                          // [kInt8Warps][cols] partial q^T S_old
    float* const red = part + kInt8Warps * cols;            // [32]: [1] = q . k, [2] = max |numerator| (int bits)
    // kMapFeatures: [2][Dv] x_hat ⊙ sigma of q and k, then W~[h] (not with p.proj); 16-byte aligned
    float* const xs = smem + (int(red - smem) + 32 + 3) / 4 * 4;
    T* const wsm = reinterpret_cast<T*>(xs + 2 * Dv);

    int8_t const* const sIn
        = p.stateIn ? static_cast<int8_t const*>(p.stateIn) + (size_t) bh * F * rowBytes : nullptr;
    int8_t* const sOut = static_cast<int8_t*>(p.stateOut) + (size_t) bh * F * rowBytes;
    bool const nextAtStart = kMapFeatures && allowsNextKernelAtStart(p.allowNextEarly);
    if (nextAtStart)
    {
        allowNextKernel();
    }
    if constexpr (kMapFeatures)
    {
        if (!p.proj)
        {
            stageRandomMatrix<T>(p, h, wsm); // its own cp.async group, before the state's
        }
        if (p.overlapStateLoad)
        {
            staggerEarlyStateLoad();
        }
    }
    if (sIn)
    {
        for (int i = threadIdx.x; i < F * rowBytes / 16; i += blockDim.x)
        {
            cpAsync16(slab + 16 * i, sIn + 16 * i, true);
        }
    }
    cpAsyncCommit();

    if constexpr (kMapFeatures)
    {
        waitForPreviousKernel(); // q, k, v, the gate logits and the keep mask come from the kernels before
    }
    int const headQK = kMapFeatures ? Dv : F; // elements of one head in q and k
    T const* const q = static_cast<T const*>(p.q) + (size_t) b * p.qkBatchStride + (size_t) h * headQK;
    T const* const k = static_cast<T const*>(p.k) + (size_t) b * p.qkBatchStride + (size_t) h * headQK;
    T const* const v = static_cast<T const*>(p.v) + (size_t) b * p.vBatchStride + (size_t) h * Dv;
    if (threadIdx.x == 0)
    {
        red[2] = 0.f;
    }
    bool const gated = p.g != nullptr;
    float gate = 0.f;
    bool masked = false;
    if constexpr (kMapFeatures)
    {
        // the state's cp.async group is later
        masked = mapDecodeInputs<T, 1>(p, b, h, q, k, v, qk, vs, xs, wsm, gate);
    }
    else
    {
        for (int i = threadIdx.x; i < F; i += blockDim.x)
        {
            qk[i] = make_float2(toFloat(q[i]), toFloat(k[i]));
        }
        for (int i = threadIdx.x; i < cols; i += blockDim.x)
        {
            vs[i] = i < Dv ? toFloat(v[i]) : 1.f;
        }
        gate = gated ? toFloat(static_cast<T const*>(p.g)[(size_t) b * p.gBatchStride + h]) : 0.f;
    }
    // a masked entry keeps its state (as k = 0 and g = 1 in the model): its rows narrow back to the same bytes
    float const keep = masked ? 1.f : (gated ? gate : 1.f), write = masked ? 0.f : (gated ? 1.f - gate : 1.f);
    cpAsyncWait<0>();
    __syncthreads(); // the slab (every thread's copies) and qk, vs; no store to the state comes before this
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

    float wv[kPerLane], acc[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
    {
        int const c = lane + 32 * i;
        wv[i] = c < cols ? write * vs[c] : 0.f;
        acc[i] = 0.f;
    }
    bool const present = sIn != nullptr; // no state in: it starts from zeros
    for (int f0 = warp * kRowsPerWarp; f0 < F; f0 += kInt8Warps * kRowsPerWarp)
    {
        int8_t code[kRowsPerWarp][kPerLane];
        int exponent[kRowsPerWarp];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
        {
            int8_t const* const row = present ? slab + (f0 + r) * rowBytes : nullptr;
#pragma unroll
            for (int i = 0; i < kPerLane; ++i)
            {
                int const c = lane + 32 * i;
                code[r][i] = present && c < cols ? row[c] : int8_t(0);
            }
            exponent[r] = present ? int(row[cols]) : 0;
        }
        __syncwarp(); // every lane has read these rows (each lane the exponent bytes) before any lane stores them
        // a row's power-of-two scale folds exactly into its two factors: keep * 2^e and q_f * 2^e
        float upd[kRowsPerWarp][kPerLane], m[kRowsPerWarp];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
        {
            float const scale = int8RowScale(exponent[r]);
            float2 const x = qk[f0 + r];
            float const keepScaled = keep * scale, qScaled = x.x * scale;
            m[r] = 0.f;
#pragma unroll
            for (int i = 0; i < kPerLane; ++i)
            {
                float const c = float(code[r][i]);
                upd[r][i] = fmaf(keepScaled, c, x.y * wv[i]);
                acc[i] = fmaf(qScaled, c, acc[i]);
                m[r] = fmaxf(m[r], fabsf(upd[r][i])); // columns past cols hold 0
            }
        }
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) // the rows' reductions are independent: all in flight at once
        {
            m[r] = warpMaxAbs(m[r]);
        }
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
        {
            int const e = int8RowExponent(m[r]);
            float const inv = exp2Int(-e);
            int8_t* const row = slab + (f0 + r) * rowBytes; // back where it came from: stored whole below
#pragma unroll
            for (int i = 0; i < kPerLane; ++i)
            {
                int const c = lane + 32 * i;
                if (c < cols)
                {
                    row[c] = int8Code(upd[r][i], inv);
                }
            }
            if (lane == 0)
            {
                row[cols] = int8_t(e);
            }
        }
    }
    if constexpr (kMapFeatures)
    {
        // not earlier in a longer grid: the next kernel's blocks would take room from this one's last blocks
        if (!nextAtStart)
        {
            allowNextKernel();
        }
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
    {
        int const c = lane + 32 * i;
        if (c < cols)
        {
            part[warp * cols + c] = acc[i];
        }
    }
    __syncthreads();
    // the new slab out in 16-byte stores, not byte stores of rows that straddle 32-byte sectors
    for (int i = threadIdx.x; i < F * rowBytes / 16; i += blockDim.x)
    {
        reinterpret_cast<int4*>(sOut)[i] = reinterpret_cast<int4 const*>(slab)[i];
    }

    // num[c] = keep * (q^T S_old)[c] + write * (q . k) * [v, 1][c]; then max |num| over the Dv value columns.
    float const qDotK = red[1];
    float localMax = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
    {
        float sum = 0.f;
        for (int w = 0; w < kInt8Warps; ++w)
        {
            sum += part[w * cols + c];
        }
        sum = fmaf(keep, sum, write * qDotK * vs[c]);
        part[c] = sum; // warp 0's slot now holds the total (each column is owned by one thread here)
        if (c < Dv)
        {
            localMax = fmaxf(localMax, fabsf(sum));
        }
    }
    localMax = warpMaxAbs(localMax);
    if (lane == 0 && localMax > 0.f)
    {
        atomicMax(reinterpret_cast<int*>(red + 2), __float_as_int(localMax));
    }
    __syncthreads();
    float const scale = readoutScale(part[Dv], __int_as_float(reinterpret_cast<int const*>(red)[2]), p.eps);
    T* const out = static_cast<T*>(p.out) + (size_t) b * p.outBatchStride + (size_t) h * Dv;
    for (int c = threadIdx.x; c < Dv; c += blockDim.x)
    {
        out[c] = fromFloat<T>(part[c] * scale);
    }
}

// The kernel's shared memory: the slab as stored (F (Dv + 2) bytes, a multiple of 16), then qk, vs, the warps'
// partial sums and red; with the decode prologue, from a 16-byte boundary, xs and (without p.proj) W~[h] with
// rows padded by 8 bytes.
template <typename T, bool kMapFeatures>
size_t int8StepSharedBytes(StepParams const& p)
{
    int const cols = p.Dv + 1;
    size_t const floats = size_t(p.F) * (p.Dv + 2) / 4 + 2 * (p.F + 1) + cols + kInt8Warps * cols + 32;
    return kMapFeatures ? withDecodePrologueBytes(floats, p.Dv, p.D, sizeof(T), !p.proj) : sizeof(float) * floats;
}

template <typename T, int kPerLane, bool kMapFeatures>
cudaError_t launchInt8Sized(StepParams const& p, cudaStream_t stream)
{
    size_t const bytes = int8StepSharedBytes<T, kMapFeatures>(p);
    auto const kernel = scanStepInt8Kernel<T, kPerLane, kMapFeatures>;
    if (bytes > 48 * 1024) // F = 256, Dv = 256: 77 KB
    {
        cudaError_t const e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
        if (e != cudaSuccess)
        {
            return e;
        }
    }
    if (kMapFeatures && p.overlapStateLoad)
    {
        cudaError_t const e = launchDependent(kernel, p.B * p.H, kInt8Warps * 32, bytes, stream, p);
        return e != cudaSuccess ? e : cudaGetLastError();
    }
    kernel<<<p.B * p.H, kInt8Warps * 32, bytes, stream>>>(p);
    return cudaGetLastError();
}

// The instance with kPerLane = ceil((Dv + 1) / 32) columns per lane; the fused step (dh <= 128,
// decode_attention_step.cu) needs at most 5, so its larger instances are not compiled.
template <typename T, bool kMapFeatures, int kPerLane = 1>
cudaError_t launchInt8(StepParams const& p, cudaStream_t stream)
{
    constexpr int kMaxPerLane = kMapFeatures ? kMaxDecodeColsPerLane : kMaxColsPerLane;
    int const perLane = (p.Dv + 1 + 31) / 32;
    if constexpr (kPerLane < kMaxPerLane)
    {
        if (perLane > kPerLane)
        {
            return launchInt8<T, kMapFeatures, kPerLane + 1>(p, stream);
        }
    }
    if (perLane > kPerLane)
    {
        return cudaErrorInvalidValue;
    }
    return launchInt8Sized<T, kPerLane, kMapFeatures>(p, stream);
}

template <bool kMapFeatures>
cudaError_t launchInt8ForDtype(StepParams const& p, int dtype, cudaStream_t stream)
{
    switch (dtype)
    {
    case 0: return launchInt8<float, kMapFeatures>(p, stream);
    case 1: return launchInt8<__half, kMapFeatures>(p, stream);
    default: return launchInt8<__nv_bfloat16, kMapFeatures>(p, stream);
    }
}

} // namespace

cudaError_t launchStepInt8(StepParams const& p, int dtype, cudaStream_t stream)
{
    return launchInt8ForDtype<false>(p, dtype, stream);
}

cudaError_t launchDecodeStepInt8(StepParams const& p, int dtype, cudaStream_t stream)
{
    return launchInt8ForDtype<true>(p, dtype, stream);
}

} // namespace rfa
