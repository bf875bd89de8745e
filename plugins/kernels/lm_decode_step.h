// One decode step of a whole RFA language model for one sequence (batch 1) in one persistent kernel:
// embedding (+ sinusoidal position) -> n_layers x [LayerNorm, q/k/v/gate GEMV, random features, gated scan
// step on the fp32 state (in place), bounded readout, output projection + residual, LayerNorm, FFN with
// exact GELU, + residual] -> final LayerNorm -> LM head -> logits and their argmax.
// (rfa_export/model/lm.py, RFALanguageModel.step; reference: rfa_export/ops/lm_decode_step/naive.py.)
//
// Why one kernel: at batch 1 the step is bound by reading the weights once (~65 us for 267 MB on an H200),
// but as ~50 dependent kernels each pays its own ramp and drain. Here one block per multiprocessor streams
// its share of every weight matrix into shared memory (a ring of bulk copies that runs ahead across
// layers, since weights do not depend on the data), and values crossing blocks carry a flag of the stage
// that wrote them (no grid-wide barriers). Activations between stages stay fp32 (more exact than the composed path's rounding).
// Compute capability 9.0 (bulk copies, mbarriers); launch only, on the given stream.
#pragma once

#include "causal_gated_scan.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One layer's parameters, all of the step's weight dtype unless noted; dense, 16-byte aligned.
typedef struct
{
    const void* ln_attn_weight; // [d]
    const void* ln_attn_bias;   // [d]
    const void* qkvg_weight;    // [3d (+ H when gated), d]: q, k, v and the gate logits, rows in that order
    const void* qkvg_bias;      // [3d (+ H)]
    const void* sigma;          // [H, dh]
    const void* w_tilde;        // [H, D, dh]
    const void* o_weight;       // [d, d]
    const void* o_bias;         // [d]
    const void* ln_ffn_weight;  // [d]
    const void* ln_ffn_bias;    // [d]
    const void* ffn1_weight;    // [d_ffn, d]
    const void* ffn1_bias;      // [d_ffn]
    const void* ffn2_weight;    // [d, d_ffn]
    const void* ffn2_bias;      // [d]
} rfa_lm_step_layer_t;

#define RFA_LM_STEP_MAX_LAYERS 64

typedef struct
{
    int n_layers, d_model, n_heads, num_features, d_ffn, vocab_size;
    int kind;       // rfa_feature_kind_t
    int gated;      // 0 or 1
    int sinusoidal; // 1: add sinusoidal positions to the scaled embedding
    rfa_dtype_t dtype; // of the weights and logits: RFA_FLOAT16 or RFA_BFLOAT16
    float layer_norm_eps, eps, embed_scale;
    const rfa_lm_step_layer_t* layers; // device array [n_layers]: weights change rarely, states per sequence
    float* states[RFA_LM_STEP_MAX_LAYERS]; // [H, F, dh + 1] fp32 (S | z) per layer, updated in place
    const void* embed;                 // [vocab, d]
    const void* ln_f_weight;           // [d]
    const void* ln_f_bias;             // [d]
    const void* lm_head_weight;        // [vocab, d]
    const void* lm_head_bias;          // [vocab] or null
    const int64_t* token;              // device [1]
    const int64_t* position;           // device [1]
    void* logits;                      // device [vocab], of dtype
    int64_t* next_token;               // device [1]: argmax of logits (first of ties), or null; may alias token
    void* workspace;                   // rfa_lm_step_workspace_size bytes, zeroed once before the first step
    // null, or device [4 + 10 n_layers] where block 0 records where the step's time goes: [0], [1] the
    // global timer (ns) at its start and at the end of its LM head share; [2] clock64 at the start;
    // [3 + 2k] clock64 when its work of stage k is done (five per layer, A-E), [4 + 2k] when the inputs of
    // the stage after it have all arrived; [3 + 10 n_layers] clock64 when its share of the LM head is done
    unsigned long long* timeline;
} rfa_lm_step_args_t;

// 0 when supported: dtype fp16/bf16; d_model (up to 4096) and d_ffn (up to 8192) multiples of 256 that
// split into at most 16 segments of up to 1024; head_dim = d_model / n_heads in {32, 64, 128}; num_features in [1, 128]; the
// state rows of a block a multiple of 4; 1 <= n_layers <= RFA_LM_STEP_MAX_LAYERS; finite positive eps; kind valid; pointers non-null;
// a device of compute capability 9.0 with room for one block per multiprocessor.
RFA_API int rfa_lm_step_check(const rfa_lm_step_args_t* args);
// Bytes of workspace (activations, partial sums, barrier counters) for these sizes on the current device.
RFA_API size_t rfa_lm_step_workspace_size(const rfa_lm_step_args_t* args);
RFA_API int rfa_lm_step(const rfa_lm_step_args_t* args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
