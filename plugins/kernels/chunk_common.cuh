// Device helpers of the two tensor-core prefills (causal_gated_scan_chunk_mma.cu, causal_gated_scan_chunk_wgmma.cu):
// 16-bit pair packing, the fast exp2, the quad max, and the gate terms of a chunk of 64 steps.
#pragma once

#include "scan_common.cuh"

#include <cstdint>

namespace rfa
{

constexpr int kGateChunk = 64;                        // chunk length of both prefills
constexpr int kGateTermsStride = 4 * kGateChunk + 4; // floats of one chunk's gate terms

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 const v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t const*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi)
{
    __half2 const v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t const*>(&v);
}

// 2^x on the special-function unit (relative error ~2^-22; large negative x gives 0).
__device__ __forceinline__ float fastExp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// max over the four lanes of a quad (the lanes holding one accumulator row)
__device__ __forceinline__ float quadMax(float x)
{
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// One warp: the raw gates of chunk n, lane l holding steps 2l and 2l + 1; 0 past T or without gates (g null).
// g points at step 0 of the (b, h), consecutive steps `stride` elements apart. Kept in the input type and
// converted only by chunkGateTerms, a chunk later: converting here would wait out the load's latency.
template <typename T>
__device__ __forceinline__ void loadChunkGates(T const* g, size_t stride, int n, int T_, T (&raw)[2])
{
    int const lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < 2; ++j)
    {
        int const t = n * kGateChunk + 2 * lane + j;
        raw[j] = (g != nullptr && t < T_) ? g[size_t(t) * stride] : fromFloat<T>(0.f);
    }
}

// One warp: chunk n's gate terms from its raw gates (loadChunkGates), into gb[kGateTermsStride]:
//   [C] b log2(e), [C] 1 - g (0 past T), [C] exp(b), [C] w = exp(b_C - b) (1 - g), [1] exp(b_C),
// b the prefix sums of log g within the chunk, in fp64: differences of them stay exact for gates near 1.
template <typename T>
__device__ __forceinline__ void chunkGateTerms(float* gb, int n, int T_, bool gated, T const (&raw)[2])
{
    constexpr float kLog2e = 1.4426950408889634f;
    int const lane = threadIdx.x % 32;
    float const gv[2] = {toFloat(raw[0]), toFloat(raw[1])};
    double a[2];
    float ks[2];
#pragma unroll
    for (int j = 0; j < 2; ++j)
    {
        bool const valid = n * kGateChunk + 2 * lane + j < T_;
        a[j] = (gated && valid) ? double(logGate(gv[j])) : 0.0;
        ks[j] = valid ? (gated ? 1.f - gv[j] : 1.f) : 0.f;
    }
    double const pairSum = a[0] + a[1];
    double const incl = warpInclusiveSum(pairSum);
    double const bj[2] = {incl - pairSum + a[0], incl};
    double const last = __shfl_sync(0xffffffffu, incl, 31);
#pragma unroll
    for (int j = 0; j < 2; ++j)
    {
        int const t = 2 * lane + j;
        gb[t] = float(bj[j]) * kLog2e;
        gb[kGateChunk + t] = ks[j];
        gb[2 * kGateChunk + t] = expf(float(bj[j]));
        gb[3 * kGateChunk + t] = expf(float(last - bj[j])) * ks[j];
    }
    if (lane == 0)
    {
        gb[4 * kGateChunk] = expf(float(last));
    }
}

// One warp, before the first chunk: chunk 0's gate terms into gb0, and chunk 1's raw gates into raw.
template <typename T>
__device__ __forceinline__ void primeChunkGates(T const* g, size_t stride, int T_, bool gated, float* gb0, T (&raw)[2])
{
    loadChunkGates(g, stride, 0, T_, raw);
    chunkGateTerms(gb0, 0, T_, gated, raw);
    loadChunkGates(g, stride, 1, T_, raw);
}

} // namespace rfa
