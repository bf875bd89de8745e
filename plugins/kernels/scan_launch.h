// Internal launch interface of the CausalGatedScan kernels (the public ABI is causal_gated_scan.h).
#pragma once

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
    float const* stateIn; // may be null (zeros) or equal to stateOut
    void* out;
    float* stateOut;
    size_t qkBatchStride, vBatchStride, gBatchStride;
    int stripeRows; // state rows per pass of the block; set by the launcher
};

struct ChunkParams
{
    int B, T, H, F, Dv;
    float eps;
    void const* q;
    void const* k;
    void const* v;
    void const* g;
    float const* stateIn;
    void* out;
    float* stateOut;
    int tileWidth; // value columns per block; blocks of one (b, h) form a cluster
};

cudaError_t launchStep(StepParams const& p, int dtype, cudaStream_t stream);
cudaError_t launchChunk(ChunkParams const& p, int dtype, cudaStream_t stream);

// The tensor-core prefill (causal_gated_scan_chunk_mma.cu) for the sizes it is built for; launchChunk
// uses it when chunkMmaSupports says so.
bool chunkMmaSupports(int F, int Dv, int dtype);
cudaError_t launchChunkMma(ChunkParams const& p, int dtype, cudaStream_t stream);

} // namespace rfa
