// One decode step of a causal RFA attention layer in one launch: the random feature map of q and k
// (random_features.h), the gate's sigmoid and the rfa::CausalGatedScan step (causal_gated_scan.h, T = 1),
// the state updated in place. This is the model's decoding fast path, not part of the op contract: the op
// takes features; this takes the projections the features are made from. Launch only, on the given stream.
#pragma once

#include "random_features.h"

#ifdef __cplusplus
extern "C" {
#endif

// q, k, v [B, H, dh] and gate_logits [B, H] (null = ungated) are strided by row_stride elements between
// batch entries and dense within one (they may be column slices of one fused projection), all of `dtype`;
// sigma [H, dh], w_tilde [H, D, dh] of `dtype`; keep [B] int64, 0 where the step must leave that entry's
// state unchanged (null = all steps count); state [B, H, F, dh + 1] of state_dtype (fp32 or bf16) or
// [B, H, F, dh + 2] int8 rows (docs/op_contract.md, "State dtype"), F = 2D (gaussian) or D (arccos), read and
// written in place; out [B, H, dh] dense, of `dtype`.
// overlap_state_load != 0 (compute capability 9.0+, ignored elsewhere): the kernel is a programmatic
// dependent launch and starts loading the state and w_tilde while the kernel launched just before it on the
// stream is still running; q, k, v, gate_logits and keep are read only after that kernel has finished. Set
// it only when that kernel writes neither the state nor w_tilde (a decoding loop's q/k/v projection).
// proj (may be null): the projections of q and k made before this launch (the q/k/v GEMM's epilogue,
// rfa_export/ops/decode_linear), fp32 [B, H, 2 (q, k), proj_parts, D + 1]: part m holds, over the m-th of
// proj_parts equal ranges of dh, sum_j W~[h, d, j] sigma[h, j] x_j for d < D and sum_j x_j^2 at D. With it the
// kernel reads neither q, k, sigma nor w_tilde: p_d = (sum over the parts) / max(|x|, 1e-6), |x|^2 the sum
// of the parts' squares, then the feature map as random_features.h (same results up to fp32 rounding).
// allow_next_early != 0 (with overlap_state_load): where the grid has at most one block per multiprocessor
// (B * H of them), the kernel lets the next kernel on the stream launch at its start instead of after its
// state update, so that kernel's reads before its own wait overlap this whole step.
// timeline (profiling, fp32 and bf16 states with overlap_state_load; may be null): 16 uint64 per block
// b * H + h, written by its thread 0: [0] the global timer (ns) at its start; the cycle counter at [1] its start,
// [2] its state loads issued, [3] the kernel before finished (its wait returned), [4] phi(q), phi(k) and the
// gate ready, [5] its state slab arrived (kernels staging the slab: dh <= 64; else not written), [6] the state
// updated, [7] its end; [8] the global timer at its end.
typedef struct
{
    int B, H, dh, D;
    int kind;
    rfa_dtype_t dtype;
    float eps;
    long long row_stride;
    const void* q;
    const void* k;
    const void* v;
    const void* gate_logits;
    const void* sigma;
    const void* w_tilde;
    const long long* keep;
    void* state; // of state_dtype
    void* out;
    int overlap_state_load;
    const float* proj;
    int proj_parts;
    rfa_dtype_t state_dtype; // RFA_FLOAT32 (a zeroed struct), RFA_BFLOAT16 or RFA_INT8 (docs/op_contract.md)
    int allow_next_early;
    unsigned long long* timeline; // may be null: profiling only (above)
} rfa_decode_args_t;

// 0 when supported: B, H >= 1; dh and D in [1, 128] with F and dh multiples of 16 in [16, 256] (the step
// kernel's sizes); kind, dtype and state_dtype valid; required pointers set; state 16-byte aligned; row_stride >= H * dh;
// proj null or proj_parts in [1, 4] dividing dh.
RFA_API int rfa_decode_attention_step_check(const rfa_decode_args_t* args);
RFA_API int rfa_decode_attention_step(const rfa_decode_args_t* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
