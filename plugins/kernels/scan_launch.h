// Internal launch interface of the CausalGatedScan kernels (the public ABI is causal_gated_scan.h).
#pragma once

#include "scan_common.cuh"

#include <cuda_runtime.h>
#include <stddef.h>

namespace rfa
{

// One time step for every (b, h). Strides are in elements between consecutive batch entries, so the same
// kernel serves a true T = 1 call and one step of a longer sequence.
struct StepParams
{
    int B, H, F, Dv;
    float eps;
    void const* q;
    void const* k;
    void const* v;
    void const* g;
    void const* stateIn; // may be null (zeros) or equal to stateOut
    void* out;
    void* stateOut;
    bool stateBf16; // the state is stored as bf16 (else fp32): docs/op_contract.md, "State dtype"
    bool stateInt8; // int8 rows [.., F, Dv + 2] instead (causal_gated_scan_step_int8.cu)
    size_t qkBatchStride, vBatchStride, gBatchStride, outBatchStride;
    int stripeRows; // state rows per pass of the block; set by the launcher
    // Decode prologue (rfa_decode_attention_step) when wTilde is set: q and k are raw head vectors of dh
    // (= Dv) elements, mapped to the F features in the kernel; g holds gate logits; keepMask (may be null)
    // marks batch entries whose step leaves the state unchanged (0).
    void const* sigma;  // [H, dh]
    void const* wTilde; // [H, D, dh]
    int D, featureKind; // rfa_feature_kind_t
    long long const* keepMask;
    // Decode prologue only: launched as a programmatic dependent launch, the state loads start before the
    // kernel before this one has finished (which therefore must not write the state)
    bool overlapStateLoad;
    // Decode prologue only, with overlapStateLoad: a grid of at most one block per multiprocessor lets the
    // next kernel launch at its start (rfa_decode_args_t::allow_next_early)
    bool allowNextEarly;
    // Decode prologue only, may be null (profiling): kStepTimelineFields timestamps per block
    // (rfa_decode_args_t::timeline)
    unsigned long long* timeline;
    // Decode prologue only, may be null: q and k already projected (rfa_decode_args_t::proj); then q, k,
    // sigma and wTilde are not read
    float const* proj;
    int projParts; // at most kMaxProjParts
};

constexpr int kMaxProjParts = 4; // rfa_decode_args_t::proj_parts
constexpr int kStepTimelineFields = 16; // rfa_decode_args_t::timeline

struct ChunkParams
{
    int B, T, H, F, Dv;
    float eps;
    void const* q;
    void const* k;
    void const* v;
    void const* g;
    StateIn stateIn;
    void* out;
    StateOut stateOut;
    int tileWidth;     // value columns per block; blocks of one (b, h) form a cluster
    bool mmaSyncOnly;  // tests and benchmarks: the mma.sync prefill even where the wgmma one runs
    // Optional workspace (rfa_causal_gated_scan's): lets the Hopper prefill split long sequences of few (b, h)
    // into segments run in parallel (chunkWgmmaWorkspaceBytes says how much it needs)
    void* workspace;
    size_t workspaceBytes;
};

cudaError_t launchStep(StepParams const& p, int dtype, cudaStream_t stream);
// The step for an int8-row state (p.stateInt8), without and with the decode prologue.
cudaError_t launchStepInt8(StepParams const& p, int dtype, cudaStream_t stream);
cudaError_t launchDecodeStepInt8(StepParams const& p, int dtype, cudaStream_t stream);
// The step kernel with the decode prologue (p.wTilde set); an int8-row state goes to launchDecodeStepInt8.
cudaError_t launchDecodeStep(StepParams const& p, int dtype, cudaStream_t stream);
cudaError_t launchChunk(ChunkParams const& p, int dtype, cudaStream_t stream);
// int8-row states around the chunked kernels (int8_rows.cu): [rows, cols + 1] int8 rows <-> [rows, cols] fp32.
cudaError_t launchWidenInt8Rows(void const* in, float* out, size_t rows, int cols, cudaStream_t stream);
cudaError_t launchNarrowInt8Rows(float const* in, void* out, size_t rows, int cols, cudaStream_t stream);

// The tensor-core prefill (causal_gated_scan_chunk_mma.cu) for the sizes it is built for; launchChunk
// uses it when chunkMmaSupports says so.
bool chunkMmaSupports(int F, int Dv, int dtype);
// True where the general chunked kernel would split the value columns over a thread-block cluster, which
// needs compute capability 9.0 (rfa_scan_check refuses those shapes on older devices).
bool chunkNeedsClusters(int F, int Dv, int dtype);
// The current device's compute capability major version (cached per device).
int deviceMajor();
cudaError_t launchChunkMma(ChunkParams const& p, int dtype, cudaStream_t stream);
// The Hopper warpgroup-MMA prefill (causal_gated_scan_chunk_wgmma.cu): F = 128, Dv = 64, fp16/bf16, built for
// sm_90a (RFA_HAVE_WGMMA) and running on a compute capability 9.0 device; launchChunk prefers it.
bool chunkWgmmaSupports(int F, int Dv, int dtype);
cudaError_t launchChunkWgmma(ChunkParams const& p, int dtype, cudaStream_t stream);
// Workspace bytes with which launchChunkWgmma may split any sequence across the device (0 where it does not
// run); a smaller workspace gives fewer segments. The Bound: the same for any F, Dv and device (0 for fp32).
size_t chunkWgmmaWorkspaceBytes(int F, int Dv, int dtype);
size_t chunkWgmmaWorkspaceBound(int dtype);

} // namespace rfa
