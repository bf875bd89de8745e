// Residual add fused with the LayerNorm that follows it (pre-LN transformer blocks), one launch:
//   sum = x + y                      (rounded to `dtype`, as two tensors of that dtype add in PyTorch)
//   out = (sum - mean) / sqrt(var + eps) * weight + bias    (mean, biased var and the affine map in fp32)
// y == null skips the add (a plain LayerNorm of x; sum is then not written). Launch only, on the given stream.
// On compute capability 9.0+ the kernel is a programmatic dependent launch: it reads weight and bias before
// the kernel launched just before it on the stream has finished, x and y after; that kernel must not write
// weight or bias.
#pragma once

#include "causal_gated_scan.h"

#ifdef __cplusplus
extern "C" {
#endif

// x, y, sum, out [N, D] and weight, bias [D] are dense, all of `dtype`. sum may be x (in place); out must
// not overlap x, y or sum. bias may be null (no bias); sum may be null only when y is.
// y_splits > 1: y is instead the fp32 partial sums [y_splits, N, D] of a GEMM split over its inner
// dimension, and the term added to x is that GEMM's output: (the sum of the partials + y_bias) rounded once
// to `dtype` (y_bias [D] of `dtype`, may be null). y_splits 0 or 1: y as above, y_bias must be null.
typedef struct
{
    int N, D;
    rfa_dtype_t dtype;
    float eps;
    const void* x;
    const void* y;
    const void* weight;
    const void* bias;
    void* sum;
    void* out;
    int y_splits;
    const void* y_bias;
} rfa_add_layer_norm_args_t;

// 0 when supported: N >= 1, D in [1, 4096], eps >= 0, y_splits in [0, 64], dtype valid, required pointers
// non-null.
RFA_API int rfa_add_layer_norm_check(const rfa_add_layer_norm_args_t* args);
RFA_API int rfa_add_layer_norm(const rfa_add_layer_norm_args_t* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
