// Fused random feature map phi of RFA on CUDA (one launch instead of ~12 eager kernels per call):
//   x_hat = x / max(|x|, 1e-6) per (row, head);  p = W~[h] (x_hat ⊙ sigma[h])   (fp32)
//   gaussian: phi = D^-1/2 [sin p, cos p]  (F = 2D)        arccos: phi = (2/D)^1/2 relu(p)  (F = D)
// the math of rfa_export/model/feature_maps.py (RandomFeatureMap.forward). Launch only, on the given stream.
#pragma once

#include "causal_gated_scan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum
{
    RFA_FEATURES_GAUSSIAN = 0,
    RFA_FEATURES_ARCCOS = 1
} rfa_feature_kind_t;

// x [N, H, dh], sigma [H, dh], w_tilde [H, D, dh] and out [N, H, F] are dense, all of `dtype`.
typedef struct
{
    int N, H, dh, D;
    int kind;
    rfa_dtype_t dtype;
    const void* x;
    const void* sigma;
    const void* w_tilde;
    void* out;
} rfa_features_args_t;

// 0 when supported: N, H >= 1; dh and D in [1, 128]; kind and dtype valid; pointers non-null.
RFA_API int rfa_random_features_check(const rfa_features_args_t* args);
RFA_API int rfa_random_features(const rfa_features_args_t* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
