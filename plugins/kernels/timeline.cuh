// Timestamps for kernels that record where their time goes (profiling only): the global timer (ns, the same
// on every multiprocessor) and a multiprocessor's cycle counter, which is finer but not synchronised between them.
#pragma once

namespace rfa
{

__device__ __forceinline__ unsigned long long globalTimer()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Thread 0 of the block writes the cycle counter into timeline[i], where a timeline is given.
__device__ __forceinline__ void stampCycles(unsigned long long* timeline, int i)
{
    if (timeline != nullptr && threadIdx.x == 0)
    {
        timeline[i] = clock64();
    }
}

} // namespace rfa
