// Hopper tensor memory accelerator (TMA, sm_90): mbarriers, tiled bulk-tensor loads and stores through a
// CUtensorMap, plain bulk stores and L2 prefetches, and the host-side map encoding (the driver's
// cuTensorMapEncodeTiled, reached through the runtime's entry-point query so nothing links libcuda). Boxes
// here are 64 x 64 16-bit elements of a 3-D tensor [B][T][width], 128-byte swizzled in shared memory (the
// layout of wgmma.cuh's swizzled tiles); rows past T read as zeros and are not written.
#pragma once

#include "scan_common.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>

namespace rfa
{

__device__ __forceinline__ void mbarrierInit(uint64_t* bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smemAddr(bar)), "r"(count) : "memory");
}

// the initialised barriers become visible to the async proxy (the TMA unit) and, after a barrier, to the
// other threads
__device__ __forceinline__ void fenceMbarrierInit()
{
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// one arrival that also announces `bytes` of transactions to come
__device__ __forceinline__ void tmaExpectTx(uint64_t* bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}

// waits until the barrier's phase with the given parity has completed
__device__ __forceinline__ void mbarrierWait(uint64_t* bar, uint32_t parity)
{
    asm volatile("{\n.reg .pred done;\nWAIT_LOOP:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_LOOP;\n}\n" ::"r"(smemAddr(bar)),
                 "r"(parity)
                 : "memory");
}

// box (x, y, z) = (column, row, batch) of the map into shared memory, completing on `bar`
__device__ __forceinline__ void tmaLoad3d(void* dst, CUtensorMap const* map, uint64_t* bar, int x, int y, int z)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(
                     smemAddr(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(smemAddr(bar)), "r"(x), "r"(y), "r"(z)
                 : "memory");
}

// shared memory into box (x, y, z) of the map; the writes to `src` must be fenced to the async proxy first
__device__ __forceinline__ void tmaStore3d(CUtensorMap const* map, void const* src, int x, int y, int z)
{
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
                     reinterpret_cast<uint64_t>(map)),
                 "r"(smemAddr(src)), "r"(x), "r"(y), "r"(z)
                 : "memory");
}

// `bytes` (a multiple of 16; both addresses 16-byte aligned) of shared memory to global memory, in this
// thread's bulk group; the writes to `src` must be fenced to the async proxy first
__device__ __forceinline__ void bulkStore(void* dst, void const* src, uint32_t bytes)
{
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(smemAddr(src)),
                 "r"(bytes)
                 : "memory");
}

// asks L2 to fetch `bytes` (a multiple of 16, 16-byte aligned) of global memory; a hint, no data returns
__device__ __forceinline__ void prefetchL2(void const* src, uint32_t bytes)
{
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}

__device__ __forceinline__ void tmaStoreCommit()
{
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// this thread's committed stores have read their shared memory (it may be overwritten)
__device__ __forceinline__ void tmaStoreWaitRead()
{
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

// ... and have completed
__device__ __forceinline__ void tmaStoreWaitAll()
{
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// The driver's encoder, or null where the driver has none (then the TMA kernels are not used).
inline PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder()
{
    static PFN_cuTensorMapEncodeTiled_v12000 const encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
        cudaError_t const e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
#else // the versioned query arrived in CUDA 12.5
        cudaError_t const e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
        if (e != cudaSuccess || found != cudaDriverEntryPointSuccess)
        {
            cudaGetLastError(); // the query's error is an answer, not a sticky failure of the caller's launch
            return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
        }
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }();
    return encode;
}

// A map over the 16-bit tensor [B][T][width] at `base` (16-byte aligned, width a multiple of 8), in 64 x 64
// boxes, 128-byte swizzled. False if the encoder is missing or refuses the tensor.
inline bool encodeTileMap(CUtensorMap* map, void const* base, bool bf16, int B, int T, int width)
{
    PFN_cuTensorMapEncodeTiled_v12000 const encode = tensorMapEncoder();
    if (encode == nullptr)
    {
        return false;
    }
    cuuint64_t const dims[3] = {cuuint64_t(width), cuuint64_t(T), cuuint64_t(B)};
    cuuint64_t const strides[2] = {cuuint64_t(width) * 2, cuuint64_t(width) * 2 * cuuint64_t(T)};
    cuuint32_t const box[3] = {64, 64, 1};
    cuuint32_t const elementStrides[3] = {1, 1, 1};
    return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, const_cast<void*>(base), dims,
               strides, box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

} // namespace rfa
