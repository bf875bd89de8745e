// The int8-row state format (docs/op_contract.md, "State dtype"): each row of Dv + 1 entries is stored as
// Dv + 1 codes and a power-of-two exponent e, entry = code * 2^e. Shared by the int8 step kernel and the
// widen / narrow kernels around a prefill.
#pragma once

#include <cuda_runtime.h>

namespace rfa
{

constexpr int kInt8CodeMax = 127;
constexpr int kInt8ExponentMin = -120, kInt8ExponentMax = 120;

// 2^e as a float, e in [-126, 127]: exact, no libm call.
__device__ __forceinline__ float exp2Int(int e)
{
    return __int_as_float((e + 127) << 23);
}

// The least e with 127 * 2^e >= m, clamped to [kInt8ExponentMin, kInt8ExponentMax]; an all-zero row takes the least.
__device__ __forceinline__ int int8RowExponent(float m)
{
    if (!(m > 0.f))
    {
        return kInt8ExponentMin;
    }
    int E = 0;
    float const mant = frexpf(m, &E); // m = mant * 2^E, mant in [0.5, 1)
    int const e = E - 7 + (mant > float(kInt8CodeMax) / 128.f ? 1 : 0);
    return min(max(e, kInt8ExponentMin), kInt8ExponentMax);
}

// The code of x in a row of exponent e (inv = 2^-e): rounded to nearest-even, clipped to [-127, 127].
__device__ __forceinline__ signed char int8Code(float x, float inv)
{
    return static_cast<signed char>(min(max(__float2int_rn(x * inv), -kInt8CodeMax), kInt8CodeMax));
}

// The scale 2^e of a stored exponent byte (a contract state has |e| <= 120; the clamp keeps others finite).
__device__ __forceinline__ float int8RowScale(int e)
{
    return exp2Int(min(max(e, -126), 127));
}

} // namespace rfa
