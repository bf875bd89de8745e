// The C ABI of the CausalGatedScan kernels: checks, then dispatch to the step or the chunked kernel.
#include "causal_gated_scan.h"
#include "scan_common.cuh"
#include "scan_launch.h"

#include <cstddef>
#include <cstdint>

namespace
{

using rfa::aligned16;

int checkArgs(rfa_scan_args_t const* a)
{
    if (a == nullptr)
    {
        return RFA_ERR_NULL;
    }
    int const status = rfa_scan_check(a->B, a->T, a->H, a->F, a->Dv, a->dtype);
    if (status != RFA_OK)
    {
        return status;
    }
    if (a->state_dtype != RFA_FLOAT32 && a->state_dtype != RFA_BFLOAT16 && a->state_dtype != RFA_INT8)
    {
        return RFA_ERR_DTYPE;
    }
    if (!a->q || !a->k || !a->v || !a->out || !a->final_state)
    {
        return RFA_ERR_NULL;
    }
    void const* const tensors[] = {a->q, a->k, a->v, a->out, a->final_state};
    for (void const* p : tensors)
    {
        if (!aligned16(p))
        {
            return RFA_ERR_ALIGNMENT;
        }
    }
    if (a->initial_state && !aligned16(a->initial_state))
    {
        return RFA_ERR_ALIGNMENT;
    }
    return RFA_OK;
}

rfa::StepParams stepParams(rfa_scan_args_t const* a, int t, void const* stateIn)
{
    rfa::StepParams p{};
    p.B = a->B;
    p.H = a->H;
    p.F = a->F;
    p.Dv = a->Dv;
    p.eps = a->eps;
    size_t const elem = a->dtype == RFA_FLOAT32 ? 4 : 2;
    size_t const qkStep = size_t(a->H) * a->F, vStep = size_t(a->H) * a->Dv;
    p.q = static_cast<char const*>(a->q) + t * qkStep * elem;
    p.k = static_cast<char const*>(a->k) + t * qkStep * elem;
    p.v = static_cast<char const*>(a->v) + t * vStep * elem;
    p.g = a->g ? static_cast<char const*>(a->g) + t * size_t(a->H) * elem : nullptr;
    p.out = static_cast<char*>(a->out) + t * vStep * elem;
    p.stateIn = stateIn;
    p.stateOut = a->final_state;
    p.stateBf16 = a->state_dtype == RFA_BFLOAT16;
    p.stateInt8 = a->state_dtype == RFA_INT8;
    p.qkBatchStride = size_t(a->T) * qkStep;
    p.vBatchStride = size_t(a->T) * vStep;
    p.gBatchStride = size_t(a->T) * a->H;
    p.outBatchStride = p.vBatchStride;
    return p;
}

} // namespace

int rfa::deviceMajor()
{
    constexpr int kMaxDevices = 64;
    static int major[kMaxDevices] = {};
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0)
    {
        return 0;
    }
    if (device >= kMaxDevices)
    {
        int m = 0;
        return cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess ? m : 0;
    }
    if (major[device] == 0)
    {
        int m = 0;
        if (cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess)
        {
            major[device] = m;
        }
    }
    return major[device];
}

namespace
{

int launchStatus(cudaError_t e)
{
    return e == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

int runScan(rfa_scan_args_t const* args, int path, void* workspace, size_t workspaceBytes, cudaStream_t stream)
{
    int const status = checkArgs(args);
    if (status != RFA_OK)
    {
        return status;
    }
    if (path == 1)
    {
        for (int t = 0; t < args->T; ++t)
        {
            rfa::StepParams const p = stepParams(args, t, t == 0 ? args->initial_state : args->final_state);
            int const s = launchStatus(rfa::launchStep(p, args->dtype, stream));
            if (s != RFA_OK)
            {
                return s;
            }
        }
        return RFA_OK;
    }
    // An int8-row state: the chunked kernel runs on its fp32 copy in the first bytes of the workspace
    // (int8 rows are stored a whole row at a time, which only the step kernel's layout does).
    bool const int8State = args->state_dtype == RFA_INT8;
    size_t const stateBytes = rfa_scan_state_workspace_size(args->B, args->H, args->F, args->Dv, args->state_dtype);
    if (int8State && (workspace == nullptr || workspaceBytes < stateBytes))
    {
        return RFA_ERR_WORKSPACE;
    }
    if (int8State && !aligned16(workspace))
    {
        return RFA_ERR_ALIGNMENT;
    }
    size_t const rows = size_t(args->B) * args->H * args->F;
    float* const wide = int8State ? static_cast<float*>(workspace) : nullptr;
    if (int8State && args->initial_state != nullptr)
    {
        int const s = launchStatus(rfa::launchWidenInt8Rows(args->initial_state, wide, rows, args->Dv + 1, stream));
        if (s != RFA_OK)
        {
            return s;
        }
    }
    rfa::ChunkParams p{};
    p.B = args->B;
    p.T = args->T;
    p.H = args->H;
    p.F = args->F;
    p.Dv = args->Dv;
    p.eps = args->eps;
    p.q = args->q;
    p.k = args->k;
    p.v = args->v;
    p.g = args->g;
    bool const bf16State = args->state_dtype == RFA_BFLOAT16;
    p.stateIn = {int8State ? (args->initial_state ? wide : nullptr) : args->initial_state, bf16State};
    p.out = args->out;
    p.stateOut = {int8State ? wide : args->final_state, bf16State};
    p.mmaSyncOnly = path == 2;
    p.workspace = workspace != nullptr && workspaceBytes > stateBytes ? static_cast<char*>(workspace) + stateBytes : nullptr;
    p.workspaceBytes = p.workspace != nullptr ? workspaceBytes - stateBytes : 0;
    int const s = launchStatus(rfa::launchChunk(p, args->dtype, stream));
    if (s != RFA_OK || !int8State)
    {
        return s;
    }
    return launchStatus(rfa::launchNarrowInt8Rows(wide, args->final_state, rows, args->Dv + 1, stream));
}

} // namespace

extern "C" {

int rfa_scan_check(int B, int T, int H, int F, int Dv, int dtype)
{
    if (dtype != RFA_FLOAT32 && dtype != RFA_FLOAT16 && dtype != RFA_BFLOAT16)
    {
        return RFA_ERR_DTYPE;
    }
    if (B < 1 || T < 1 || H < 1)
    {
        return RFA_ERR_SHAPE;
    }
    if (F < 16 || F > 256 || F % 16 != 0)
    {
        return RFA_ERR_FEATURES;
    }
    if (Dv < 16 || Dv > 256 || Dv % 16 != 0)
    {
        return RFA_ERR_VALUES;
    }
    if (T > 1 && rfa::chunkNeedsClusters(F, Dv, dtype) && rfa::deviceMajor() < 9)
    {
        return RFA_ERR_ARCH;
    }
    return RFA_OK;
}

size_t rfa_scan_workspace_size(int B, int T, int H, int F, int Dv, int dtype)
{
    return rfa_scan_check(B, T, H, F, Dv, dtype) == RFA_OK ? rfa::chunkWgmmaWorkspaceBytes(F, Dv, dtype) : 0;
}

size_t rfa_scan_state_workspace_size(int B, int H, int F, int Dv, int state_dtype)
{
    if (state_dtype != RFA_INT8 || B < 1 || H < 1 || F < 1 || Dv < 1)
    {
        return 0;
    }
    size_t const bytes = size_t(B) * H * F * (Dv + 1) * sizeof(float);
    return (bytes + 255) / 256 * 256;
}

size_t rfa_scan_workspace_bound(int dtype)
{
    return rfa::chunkWgmmaWorkspaceBound(dtype);
}

int rfa_causal_gated_scan(rfa_scan_args_t const* args, void* workspace, size_t workspace_bytes, cudaStream_t stream)
{
    return runScan(args, args != nullptr && args->T == 1 ? 1 : 0, workspace, workspace_bytes, stream);
}

int rfa_causal_gated_scan_path(rfa_scan_args_t const* args, int path, cudaStream_t stream)
{
    return runScan(args, path, nullptr, 0, stream);
}

#ifdef RFA_HAVE_BUILD_INFO
#include "rfa_build_info.h" // written by CMake: CUDA version and architectures
#else
#define RFA_BUILD_INFO "unknown"
#endif

char const* rfa_build_info(void)
{
    return RFA_BUILD_INFO;
}

char const* rfa_status_string(int status)
{
    switch (status)
    {
    case RFA_OK: return "ok";
    case RFA_ERR_DTYPE: return "dtype must be fp32, fp16 or bf16, and the state fp32, bf16 or int8 rows";
    case RFA_ERR_SHAPE: return "B, T and H must be >= 1";
    case RFA_ERR_FEATURES: return "F must be a multiple of 16 in [16, 256]";
    case RFA_ERR_VALUES: return "Dv must be a multiple of 16 in [16, 256]";
    case RFA_ERR_NULL: return "a required pointer is null";
    case RFA_ERR_WORKSPACE: return "an int8-row state with T > 1 needs rfa_scan_state_workspace_size bytes of workspace";
    case RFA_ERR_ALIGNMENT: return "tensor pointers must be 16-byte aligned";
    case RFA_ERR_LAUNCH: return "CUDA launch failed";
    case RFA_ERR_FEATURE_DIMS: return "random features: dh and D must be in [1, 128]";
    case RFA_ERR_ARCH: return "this shape's prefill needs thread-block clusters (compute capability 9.0)";
    case RFA_ERR_NORM_SHAPE:
        return "layer norm: rows must be >= 1, width in [1, 4096], eps >= 0, y_splits in [0, 64], y_bias only with partial sums";
    default: return "unknown status";
    }
}

} // extern "C"
