// Fused read of an RFA cross-attention state (rfa_export/model/attention.py, RFAAttention.read) in one launch:
//   phi = the random feature map of q (random_features.h), rounded to `dtype` as the composed path rounds it
//   [num | den] = phi^T [S | z]           (the state of the row's source, fp32)
//   out = num / max(den, eps max|num|)    (the contract's bounded normaliser; 0 where that is not positive)
// Decoder rows are grouped by source: rows_per_source contiguous rows read the same state (a source's beams),
// which is never copied. Launch only, on the given stream.
#pragma once

#include "causal_gated_scan.h"

#ifdef __cplusplus
extern "C" {
#endif

// q [N, H, dh] and out [N, H, dh] dense of `dtype`; sigma [H, dh] and w_tilde [H, D, dh] of `dtype`;
// state [N / rows_per_source, H, F, dh + 1] fp32 dense (F = 2D for the gaussian map, D for arc-cosine).
typedef struct
{
    int N, rows_per_source, H, dh, D;
    int kind; // rfa_feature_kind_t
    rfa_dtype_t dtype;
    float eps;
    const void* q;
    const void* sigma;
    const void* w_tilde;
    const float* state;
    void* out;
} rfa_cross_read_args_t;

// 0 when supported: N, H >= 1; rows_per_source >= 1 dividing N; dh and D in [1, 128]; kind and dtype valid;
// eps finite and > 0; pointers non-null.
RFA_API int rfa_cross_read_check(const rfa_cross_read_args_t* args);
RFA_API int rfa_cross_read(const rfa_cross_read_args_t* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
