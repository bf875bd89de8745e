// Hopper warpgroup MMA (wgmma.mma_async, sm_90a): shared-memory matrix descriptors, fences and the
// m64n64k16 / m64n72k16 shapes used by the tensor-core prefill. Layouts (PTX ISA, "asynchronous warpgroup
// level matrix shared memory layout"): a swizzled tile here is [rows][64] 16-bit elements, 128 bytes a row,
// 16-byte chunk c of row r stored at chunk c ^ (r % 8), based on a 1024-byte boundary. Read with its rows
// as the M/N index and K along the row it is K-major; with its rows as the K index it is MN-major. An
// MN-major operand wider than 64 continues in a second such tile, `lbo` bytes further on.
#pragma once

#include "scan_common.cuh"

#include <cstdint>
#include <type_traits>

namespace rfa
{

// byte offset of element (row, col) in a [rows][64] 128-byte-swizzled tile
__device__ __forceinline__ uint32_t swizzled(int row, int col)
{
    return uint32_t(row) * 128u + ((uint32_t(col >> 3) ^ uint32_t(row & 7)) << 4) + uint32_t(col & 7) * 2u;
}

// The descriptor of a 128-byte-swizzled tile; lbo/sbo in bytes. K-major: sbo = 1024 (8-row groups), lbo
// unused; MN-major: sbo = 1024 (8 K-rows), lbo = offset of the tile holding M/N columns 64.. (unused at
// width 64).
__device__ __forceinline__ uint64_t matrixDesc(void const* p, uint32_t lbo, uint32_t sbo)
{
    uint64_t const a = smemAddr(p);
    return ((a & 0x3FFFFu) >> 4) | (uint64_t((lbo & 0x3FFFFu) >> 4) << 16) | (uint64_t((sbo & 0x3FFFFu) >> 4) << 32) |
        (uint64_t(1) << 62); // 128-byte swizzle
}

__device__ __forceinline__ void wgmmaFence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmmaCommit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmmaWaitAll()
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulators across a wgmma fence or wait.
template <int N>
__device__ __forceinline__ void pinRegisters(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i)
    {
        asm volatile("" : "+f"(d[i])::"memory");
    }
}

// fresh accumulators for a wgmma sequence
template <int N>
__device__ __forceinline__ void zeroRegisters(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i)
    {
        d[i] = 0.f;
    }
    pinRegisters(d);
}

// wgmma.mma_async, m64n64k16 and m64n72k16, 16-bit inputs, f32 accumulators added to (scale-d = 1).
// SS: A and B from shared memory descriptors; RS: A from registers (the accumulator layout of a previous wgmma).
// One asm text per shape; DT is the PTX input type, "bf16" or "f16".
#define RFA_WGMMA_ACC32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define RFA_WGMMA_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define RFA_WGMMA_ACC36 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
#define RFA_WGMMA_D36 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}"
#define RFA_WGMMA_HEAD "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
#define RFA_WGMMA_SS64(DT)                                                                                         \
    asm volatile(RFA_WGMMA_HEAD "wgmma.mma_async.sync.aligned.m64n64k16.f32." DT "." DT                              \
                 " " RFA_WGMMA_D32 ", %32, %33, p, 1, 1, %34, %35;\n}\n"         \
                 : RFA_WGMMA_ACC32                                                                                 \
                 : "l"(descA), "l"(descB), "n"(kTransA), "n"(kTransB))
#define RFA_WGMMA_SS72(DT)                                                                                         \
    asm volatile(RFA_WGMMA_HEAD "wgmma.mma_async.sync.aligned.m64n72k16.f32." DT "." DT                              \
                 " " RFA_WGMMA_D36 ", %36, %37, p, 1, 1, %38, %39;\n}\n"                                               \
                 : RFA_WGMMA_ACC36                                                                                 \
                 : "l"(descA), "l"(descB), "n"(kTransA), "n"(kTransB))
#define RFA_WGMMA_RS72(DT)                                                                                         \
    asm volatile(RFA_WGMMA_HEAD "wgmma.mma_async.sync.aligned.m64n72k16.f32." DT "." DT                              \
                 " " RFA_WGMMA_D36 ", {%36, %37, %38, %39}, %40, p, 1, 1, %41;\n}\n"                                  \
                 : RFA_WGMMA_ACC36                                                                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "n"(kTransB))

template <typename T, int kTransA, int kTransB>
__device__ __forceinline__ void wgmmaSS64(float (&d)[32], uint64_t descA, uint64_t descB)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
    {
        RFA_WGMMA_SS64("bf16");
    }
    else
    {
        RFA_WGMMA_SS64("f16");
    }
}

template <typename T, int kTransA, int kTransB>
__device__ __forceinline__ void wgmmaSS72(float (&d)[36], uint64_t descA, uint64_t descB)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
    {
        RFA_WGMMA_SS72("bf16");
    }
    else
    {
        RFA_WGMMA_SS72("f16");
    }
}

template <typename T, int kTransB>
__device__ __forceinline__ void wgmmaRS72(float (&d)[36], uint32_t const (&a)[4], uint64_t descB)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
    {
        RFA_WGMMA_RS72("bf16");
    }
    else
    {
        RFA_WGMMA_RS72("f16");
    }
}

#undef RFA_WGMMA_RS72
#undef RFA_WGMMA_SS72
#undef RFA_WGMMA_SS64
#undef RFA_WGMMA_HEAD
#undef RFA_WGMMA_D32
#undef RFA_WGMMA_ACC32
#undef RFA_WGMMA_D36
#undef RFA_WGMMA_ACC36

} // namespace rfa
