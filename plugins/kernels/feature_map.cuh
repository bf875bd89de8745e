// The per-vector arithmetic of the random feature map (random_features.h), shared by its kernel and by the
// decode prologue of the step kernel, so that both give the model the same features to the bit.
#pragma once

#include "random_features.h"

#include <cuda_runtime.h>

namespace rfa
{

// 1 / max(|x|, 1e-6), from the sum of squares of x
__device__ __forceinline__ float inverseNorm(float sumSquares)
{
    return 1.f / fmaxf(sqrtf(sumSquares), 1e-6f);
}

// D^-1/2 for the gaussian map, (2/D)^1/2 for the arc-cosine map
__device__ __forceinline__ float featureScale(bool gaussian, int D)
{
    return gaussian ? rsqrtf(float(D)) : sqrtf(2.f / float(D));
}

// The features of one projection p: gaussian (sin p, cos p) * scale (entries d and D + d); arc-cosine
// relu(p) * scale in .x (entry d; .y unused).
__device__ __forceinline__ float2 featurePair(bool gaussian, float p, float scale)
{
    if (gaussian)
    {
        float s, c;
        sincosf(p, &s, &c);
        return make_float2(s * scale, c * scale);
    }
    return make_float2(fmaxf(p, 0.f) * scale, 0.f);
}

} // namespace rfa
