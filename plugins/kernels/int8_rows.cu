// int8-row states around a prefill: the chunked kernels accumulate a float32 state, so rfa_causal_gated_scan
// widens an int8-row initial state into its workspace and narrows the final one back, once per call
// (docs/op_contract.md, "State dtype").
#include "int8_rows.cuh"
#include "scan_common.cuh"
#include "scan_launch.h"

#include <algorithm>
#include <cstdint>

namespace rfa
{

namespace
{

constexpr int kThreads = 256;

// [rows, cols + 1] int8 rows -> [rows, cols] float32, exactly.
__global__ void __launch_bounds__(kThreads) widenInt8RowsKernel(int8_t const* in, float* out, size_t rows, int cols)
{
    size_t const n = rows * size_t(cols);
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    {
        size_t const r = i / cols;
        int const c = int(i - r * cols);
        int8_t const* const row = in + r * (cols + 1);
        out[i] = float(row[c]) * int8RowScale(row[cols]);
    }
}

// [rows, cols] float32 -> [rows, cols + 1] int8 rows: a warp per row finds its largest entry, then stores it.
__global__ void __launch_bounds__(kThreads) narrowInt8RowsKernel(float const* in, int8_t* out, size_t rows, int cols)
{
    int const lane = threadIdx.x % 32;
    size_t const warps = size_t(gridDim.x) * (blockDim.x / 32);
    for (size_t r = (blockIdx.x * size_t(blockDim.x) + threadIdx.x) / 32; r < rows; r += warps)
    {
        float const* const x = in + r * cols;
        float m = 0.f;
        for (int c = lane; c < cols; c += 32)
        {
            m = fmaxf(m, fabsf(x[c]));
        }
        int const e = int8RowExponent(warpMaxAbs(m));
        float const inv = exp2Int(-e);
        int8_t* const row = out + r * (cols + 1);
        for (int c = lane; c < cols; c += 32)
        {
            row[c] = int8Code(x[c], inv);
        }
        if (lane == 0)
        {
            row[cols] = int8_t(e);
        }
    }
}

unsigned gridFor(size_t threads)
{
    return unsigned(std::min<size_t>((threads + kThreads - 1) / kThreads, size_t(1) << 16));
}

} // namespace

cudaError_t launchWidenInt8Rows(void const* in, float* out, size_t rows, int cols, cudaStream_t stream)
{
    widenInt8RowsKernel<<<gridFor(rows * cols), kThreads, 0, stream>>>(static_cast<int8_t const*>(in), out, rows, cols);
    return cudaGetLastError();
}

cudaError_t launchNarrowInt8Rows(float const* in, void* out, size_t rows, int cols, cudaStream_t stream)
{
    narrowInt8RowsKernel<<<gridFor(rows * 32), kThreads, 0, stream>>>(in, static_cast<int8_t*>(out), rows, cols);
    return cudaGetLastError();
}

} // namespace rfa
