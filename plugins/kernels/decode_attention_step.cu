// The C ABI of the fused decode step (decode_attention_step.h): checks, then the step kernel with its
// feature prologue (causal_gated_scan_step.cu).
#include "decode_attention_step.h"
#include "scan_common.cuh"
#include "scan_launch.h"

extern "C" {

int rfa_decode_attention_step_check(rfa_decode_args_t const* a)
{
    if (a == nullptr || !a->q || !a->k || !a->v || !a->sigma || !a->w_tilde || !a->state || !a->out)
    {
        return RFA_ERR_NULL;
    }
    if (a->kind != RFA_FEATURES_GAUSSIAN && a->kind != RFA_FEATURES_ARCCOS)
    {
        return RFA_ERR_SHAPE;
    }
    if (a->D < 1 || a->D > 128 || a->dh < 1 || a->dh > 128)
    {
        return RFA_ERR_FEATURE_DIMS;
    }
    int const F = a->kind == RFA_FEATURES_GAUSSIAN ? 2 * a->D : a->D;
    int const status = rfa_scan_check(a->B, 1, a->H, F, a->dh, a->dtype);
    if (status != RFA_OK)
    {
        return status;
    }
    if (a->state_dtype != RFA_FLOAT32 && a->state_dtype != RFA_BFLOAT16 && a->state_dtype != RFA_INT8)
    {
        return RFA_ERR_DTYPE;
    }
    if (a->row_stride < (long long) a->H * a->dh)
    {
        return RFA_ERR_SHAPE;
    }
    if (!rfa::aligned16(a->state))
    {
        return RFA_ERR_ALIGNMENT;
    }
    if (a->proj && (a->proj_parts < 1 || a->proj_parts > rfa::kMaxProjParts || a->dh % a->proj_parts))
    {
        return RFA_ERR_SHAPE;
    }
    return RFA_OK;
}

int rfa_decode_attention_step(rfa_decode_args_t const* a, cudaStream_t stream)
{
    int const status = rfa_decode_attention_step_check(a);
    if (status != RFA_OK)
    {
        return status;
    }
    rfa::StepParams p{};
    p.B = a->B;
    p.H = a->H;
    p.D = a->D;
    p.F = a->kind == RFA_FEATURES_GAUSSIAN ? 2 * a->D : a->D;
    p.Dv = a->dh;
    p.eps = a->eps;
    p.featureKind = a->kind;
    p.q = a->q;
    p.k = a->k;
    p.v = a->v;
    p.g = a->gate_logits;
    p.sigma = a->sigma;
    p.wTilde = a->w_tilde;
    p.keepMask = a->keep;
    p.stateIn = a->state;
    p.stateOut = a->state;
    p.stateBf16 = a->state_dtype == RFA_BFLOAT16;
    p.stateInt8 = a->state_dtype == RFA_INT8;
    p.out = a->out;
    p.overlapStateLoad = a->overlap_state_load != 0;
    p.allowNextEarly = p.overlapStateLoad && a->allow_next_early != 0;
    p.timeline = a->timeline;
    p.proj = a->proj;
    p.projParts = a->proj ? a->proj_parts : 0;
    p.qkBatchStride = p.vBatchStride = p.gBatchStride = size_t(a->row_stride);
    p.outBatchStride = size_t(a->H) * a->dh;
    return rfa::launchDecodeStep(p, a->dtype, stream) == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

} // extern "C"
