// Shared device helpers of the CausalGatedScan kernels: element conversions and the normaliser rule.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace rfa
{

// Host side: whether a device pointer allows 16-byte vector access (null counts as aligned).
inline bool aligned16(void const* p)
{
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

template <typename T>
__device__ __forceinline__ float toFloat(T x);
template <>
__device__ __forceinline__ float toFloat<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half x)
{
    return __half2float(x);
}
template <>
__device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float x);
template <>
__device__ __forceinline__ float fromFloat<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

// A state tensor [.., F, Dv + 1] as the kernels read it: fp32, or bf16 storage widened on load
// (docs/op_contract.md, "State dtype"). Null reads as absent (zeros).
struct StateIn
{
    void const* ptr;
    bool bf16;

    __host__ __device__ explicit operator bool() const
    {
        return ptr != nullptr;
    }
    __host__ __device__ StateIn operator+(size_t offset) const
    {
        return {ptr ? static_cast<char const*>(ptr) + offset * (bf16 ? 2 : 4) : nullptr, bf16};
    }
    __device__ __forceinline__ float operator[](size_t i) const
    {
        return bf16 ? __bfloat162float(static_cast<__nv_bfloat16 const*>(ptr)[i]) : static_cast<float const*>(ptr)[i];
    }
};

// The written counterpart: fp32, or bf16 storage rounded to nearest (even) on store.
struct StateOut
{
    void* ptr;
    bool bf16;

    struct Element
    {
        void* ptr;
        size_t i;
        bool bf16;
        __device__ __forceinline__ void operator=(float x) const
        {
            if (bf16)
            {
                static_cast<__nv_bfloat16*>(ptr)[i] = __float2bfloat16_rn(x);
            }
            else
            {
                static_cast<float*>(ptr)[i] = x;
            }
        }
    };

    __host__ __device__ explicit operator bool() const
    {
        return ptr != nullptr;
    }
    __host__ __device__ StateOut operator+(size_t offset) const
    {
        return {ptr ? static_cast<char*>(ptr) + offset * (bf16 ? 2 : 4) : nullptr, bf16};
    }
    __device__ __forceinline__ Element operator[](size_t i) const
    {
        return {ptr, i, bf16};
    }
};

// A gate of exactly 0 would make log g = -inf; beyond -1e4 the decay is 0 in any precision anyway, and a
// finite floor keeps differences of prefix sums (done in fp64) exact.
constexpr float kMinLogGate = -1.0e4f;

// logf, not __logf: the intrinsic's absolute error (~4e-7) swamps log g ~ -1e-7 for gates near 1.
__device__ __forceinline__ float logGate(float g)
{
    return fmaxf(logf(g), kMinLogGate);
}

// docs/op_contract.md, "Normaliser": den_c = max(den, eps * max_j |num_j|); 0 where den_c == 0.
__device__ __forceinline__ float readoutScale(float den, float maxAbsNum, float eps)
{
    float const denC = fmaxf(den, eps * maxAbsNum);
    return denC > 0.f ? 1.f / denC : 0.f;
}

// The largest |x| over a full warp. On sm_80+ one redux.sync: non-negative floats order as their bit patterns.
__device__ __forceinline__ float warpMaxAbs(float x)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(x) & 0x7fffffffu));
#else
    x = fabsf(x);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    }
    return x;
#endif
}

// Inclusive prefix sum over the lanes of a full warp.
__device__ __forceinline__ double warpInclusiveSum(double x)
{
    int const lane = threadIdx.x % 32;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1)
    {
        double const up = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
        {
            x += up;
        }
    }
    return x;
}

__device__ __forceinline__ float warpSum(float x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        x += __shfl_xor_sync(0xffffffffu, x, o);
    }
    return x;
}

__device__ __forceinline__ uint32_t smemAddr(void const* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without registers; bytes == 0 writes zeros (rows past T).
__device__ __forceinline__ void cpAsync16(void* dst, void const* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(dst)), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

// 8 bytes global -> shared (through L1: cp.async.cg copies 16 bytes only); both addresses 8-byte aligned.
__device__ __forceinline__ void cpAsync8(void* dst, void const* src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smemAddr(dst)), "l"(src) : "memory");
}

// 16 bytes global -> shared, as cpAsync16, with a hint that L2 fetch the whole 128-byte line (the block
// reads all of it).
__device__ __forceinline__ void cpAsync16Line(void* dst, void const* src)
{
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(smemAddr(dst)), "l"(src) : "memory");
}

// this thread's generic shared-memory writes become visible to later async-proxy reads (wgmma operands, bulk
// copies; sm_90)
__device__ __forceinline__ void fenceProxyAsync()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void cpAsyncCommit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cpAsyncWait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

} // namespace rfa
