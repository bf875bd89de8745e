// Programmatic dependent launch (compute capability 9.0+): a kernel launched with launchDependent may start
// while the kernel before it on the stream is still running. Before it reads anything that kernel (or any
// earlier one) may have written, it must call waitForPreviousKernel(); allowNextKernel() lets the kernel
// after it start early in turn. Decoding runs dozens of short kernels per token, and this hides each one's
// launch and ramp-up behind the tail of the one before. Both are no-ops on older devices, where
// launchDependent launches normally.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace rfa
{

__device__ __forceinline__ void waitForPreviousKernel()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allowNextKernel()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

__device__ __forceinline__ unsigned multiprocessorCount()
{
    unsigned n;
    asm("mov.u32 %0, %%nsmid;" : "=r"(n));
    return n;
}

// A kernel whose next one may launch before it has done its work: only where every block of this grid is
// resident from the start (at most one per multiprocessor), so the next kernel's blocks take no room from it.
__device__ __forceinline__ bool allowsNextKernelAtStart(bool requested)
{
    return requested && gridDim.x * gridDim.y * gridDim.z <= multiprocessorCount();
}

// Host side: whether the current device honours programmatic dependent launch.
inline bool dependentLaunchSupported()
{
    int device = 0, major = 0;
    return cudaGetDevice(&device) == cudaSuccess
        && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9;
}

template <typename... KernelArgs, typename... Args>
cudaError_t launchDependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t sharedBytes,
    cudaStream_t stream, Args&&... args)
{
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = sharedBytes;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    if (dependentLaunchSupported())
    {
        config.attrs = attribute;
        config.numAttrs = 1;
    }
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

} // namespace rfa
