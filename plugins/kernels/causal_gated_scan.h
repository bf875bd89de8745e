// rfa::CausalGatedScan on CUDA: the op contract of docs/op_contract.md.
//
// A plain C ABI (used by the TensorRT plugin, by PyTorch through ctypes, and by the tests). Launch only:
// no allocation, no synchronisation; everything runs on the given stream.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RFA_API
#else
#define RFA_API __attribute__((visibility("default")))
#endif

typedef enum
{
    RFA_FLOAT32 = 0,
    RFA_FLOAT16 = 1,
    RFA_BFLOAT16 = 2,
    RFA_INT8 = 3 // state_dtype only: int8 rows
} rfa_dtype_t;

typedef enum
{
    RFA_OK = 0,
    RFA_ERR_DTYPE = 1,        // dtype not one of fp32/fp16/bf16, or state_dtype not fp32/bf16/int8
    RFA_ERR_SHAPE = 2,        // B, T or H < 1
    RFA_ERR_FEATURES = 3,     // F not a multiple of 16 in [16, 256]
    RFA_ERR_VALUES = 4,       // Dv not a multiple of 16 in [16, 256]
    RFA_ERR_NULL = 5,         // a required pointer is null
    RFA_ERR_WORKSPACE = 6,    // an int8-row state with T > 1 and less workspace than rfa_scan_state_workspace_size
    RFA_ERR_ALIGNMENT = 7,    // a tensor pointer is not 16-byte aligned
    RFA_ERR_LAUNCH = 8,       // the CUDA launch failed (cudaGetLastError)
    RFA_ERR_FEATURE_DIMS = 9, // random features: head dim or feature count outside [1, 128]
    RFA_ERR_NORM_SHAPE = 10,  // add + layer norm: N < 1, width outside [1, 4096], eps < 0, y_splits outside
                              // [0, 64], or y_bias without partial sums
    RFA_ERR_ARCH = 11         // this shape's prefill needs thread-block clusters (compute capability 9.0)
} rfa_status_t;

// Tensors are dense, sequence-major, as the contract says:
//   q, k [B, T, H, F], v [B, T, H, Dv], g [B, T, H] (null = ungated), all of `dtype`;
//   initial_state [B, H, F, Dv + 1] of `state_dtype` (null = zeros); out [B, T, H, Dv] of `dtype`;
//   final_state [B, H, F, Dv + 1] of `state_dtype`, which may be the same pointer as initial_state (in place).
//   state_dtype: RFA_FLOAT32 (the default of a zeroed struct) or RFA_BFLOAT16 storage, widened on load and
//   rounded to nearest once on store; the scan accumulates in fp32 either way. RFA_INT8: int8 rows
//   [B, H, F, Dv + 2] (Dv + 1 codes and a power-of-two row exponent): a single step (T = 1) stores them
//   itself; a prefill (T > 1) widens the state to fp32 in the workspace, runs the chunked kernel on it and
//   narrows the result, so it needs rfa_scan_state_workspace_size bytes of workspace.
typedef struct
{
    int B, T, H, F, Dv;
    rfa_dtype_t dtype;
    float eps;
    const void* q;
    const void* k;
    const void* v;
    const void* g;
    const void* initial_state;
    void* out;
    void* final_state;
    rfa_dtype_t state_dtype;
} rfa_scan_args_t;

// 0 (RFA_OK) when the kernels support these sizes; otherwise the status naming what does not fit.
RFA_API int rfa_scan_check(int B, int T, int H, int F, int Dv, int dtype);

// Bytes of workspace with which rfa_causal_gated_scan runs fastest on the current device, for any B, T and H
// (so a workspace sized from one shape serves all): the Hopper prefill (F = 128, Dv = 64, fp16/bf16) then
// splits long sequences of few (b, h) into segments run in parallel. 0 where nothing uses a workspace.
RFA_API size_t rfa_scan_workspace_size(int B, int T, int H, int F, int Dv, int dtype);

// Bytes of workspace a call with T > 1 needs for its state besides the above (the first bytes of the
// workspace; rfa_causal_gated_scan gives the chunked kernel the rest): the fp32 copy of an int8-row state,
// rounded up to 256 bytes; 0 for fp32 and bf16 states. A single step (T = 1) needs none.
RFA_API size_t rfa_scan_state_workspace_size(int B, int H, int F, int Dv, int state_dtype);

// At least rfa_scan_workspace_size for every shape of `dtype` on every device: what a caller sizes its
// workspace with before it knows the shapes or the device it will run on (the TensorRT plugin at build time).
// Depends only on dtype and on how this library was built.
RFA_API size_t rfa_scan_workspace_bound(int dtype);

// Launch the scan on `stream`: the single-step kernel when T == 1, the chunked kernel otherwise. The workspace
// (16-byte aligned, stream-ordered, contents not kept) is optional except for an int8-row state with T > 1
// (rfa_scan_state_workspace_size, RFA_ERR_WORKSPACE without it): with fewer than rfa_scan_workspace_size
// bytes beyond that the split uses fewer segments, or none (null); the results agree either way within the
// contract's tolerance (the split sums the sequence in another order).
RFA_API int rfa_causal_gated_scan(const rfa_scan_args_t* args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Force one path (tests and benchmarks), without a workspace (so without the sequence split, and for an
// int8-row state only path 1, which rounds the state once per step: RFA_ERR_WORKSPACE otherwise): 0 = chunked,
// 1 = single-step loop (T launches), 2 = chunked without the Hopper wgmma prefill (the mma.sync kernel where
// the wgmma one would run).
RFA_API int rfa_causal_gated_scan_path(const rfa_scan_args_t* args, int path, cudaStream_t stream);

RFA_API const char* rfa_status_string(int status);

// How the library was built: "cuda <nvcc version>; architectures <CMAKE_CUDA_ARCHITECTURES>" (rfa-export doctor).
RFA_API const char* rfa_build_info(void);

#ifdef __cplusplus
}
#endif
