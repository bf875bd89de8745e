// The decode prologue of the fused decode step (decode_attention_step.h), shared by the step kernels of every
// state format: W~[h] staged in shared memory, q and k mapped to their random features (or the projections the
// q/k/v GEMM made mapped), and the stagger of state loads launched early beside that GEMM.
#pragma once

#include "feature_map.cuh"
#include "scan_common.cuh"
#include "scan_launch.h"

#include <cstdint>

namespace rfa
{

// The decode prologue, part 1: W~[h] into shared memory, rows padded by 8 bytes (kWPad elements) so the
// threads of part 2, one per row, read it with at most two-way bank conflicts. One cp.async group (8-byte
// copies; plain loads where W~ is not 8-byte aligned), committed before the state's so that part 2 can wait
// for it alone.
template <typename T>
constexpr int kWPad = 8 / sizeof(T);

// Shared memory of a step kernel with the prologue: its own `floats` first, then from a 16-byte boundary xs
// ([2][dh] floats) and, where W~ is staged (no proj), W~[h] with rows padded by 8 bytes.
inline size_t withDecodePrologueBytes(size_t floats, int dh, int D, size_t elemBytes, bool randomMatrix)
{
    size_t const wBytes = randomMatrix ? size_t(D) * (dh * elemBytes + 8) : 0;
    return sizeof(float) * ((floats + 3) / 4 * 4 + 2 * dh) + wBytes;
}

template <typename T>
__device__ void stageRandomMatrix(StepParams const& p, int h, T* wsm)
{
    int const dh = p.Dv, stride = dh + kWPad<T>;
    T const* const w = static_cast<T const*>(p.wTilde) + (size_t) h * p.D * dh;
    if ((reinterpret_cast<uintptr_t>(w) & 7u) == 0)
    {
        int const chunksPerRow = dh / kWPad<T>; // dh % 16 == 0
        for (int i = threadIdx.x; i < p.D * chunksPerRow; i += blockDim.x)
        {
            int const d = i / chunksPerRow, c = (i % chunksPerRow) * kWPad<T>;
            cpAsync8(wsm + d * stride + c, w + d * dh + c);
        }
    }
    else
    {
        for (int i = threadIdx.x; i < p.D * dh; i += blockDim.x)
        {
            wsm[(i / dh) * stride + i % dh] = w[i];
        }
    }
    cpAsyncCommit();
}

template <typename T>
__device__ __forceinline__ float2 loadPair(T const* p) // 2 consecutive elements, p 4-byte aligned
{
    if constexpr (sizeof(T) == 4)
    {
        return *reinterpret_cast<float2 const*>(p);
    }
    else
    {
        return make_float2(toFloat(p[0]), toFloat(p[1]));
    }
}

// phi(q) and phi(k) of projection d (p = W~ x_hat, unscaled) into qk[d] (and qk[D + d] for the gaussian
// map's cosines), rounded to T as random_features.cu's output is.
template <typename T>
__device__ __forceinline__ void storeFeaturePair(
    float2* qk, int d, int D, bool gaussian, float scale, float pq, float pk)
{
    auto rounded = [](float f) { return toFloat(fromFloat<T>(f)); };
    float2 const fq = featurePair(gaussian, pq, scale), fk = featurePair(gaussian, pk, scale);
    qk[d] = make_float2(rounded(fq.x), rounded(fk.x));
    if (gaussian)
    {
        qk[D + d] = make_float2(rounded(fq.y), rounded(fk.y));
    }
}

// Part 2: phi(q) and phi(k) of head h into qk[0 .. F], padding entry F included: the arithmetic of
// random_features.cu (fp32, the same order of sums), then rounded to T as that kernel's output is, so the
// model's fused and composed CUDA paths see the same features. Warps 0 and 1 normalise q and k; then one
// thread per row d of W~[h] projects both. kLaterGroups: cp.async groups committed after W~'s. All threads
// must call it.
template <typename T, int kLaterGroups>
__device__ void mapFeatures(StepParams const& p, T const* q, T const* k, int h, float2* qk, float* xs, T const* wsm)
{
    int const dh = p.Dv, D = p.D, F = p.F, stride = dh + kWPad<T>;
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp < 2)
    {
        T const* const x = warp == 0 ? q : k;
        T const* const sigma = static_cast<T const*>(p.sigma) + (size_t) h * dh;
        float v[4]; // dh <= 128
        float sq = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            int const j = lane + 32 * i;
            v[i] = j < dh ? toFloat(x[j]) : 0.f;
            sq = fmaf(v[i], v[i], sq);
        }
        float const inv = inverseNorm(warpSum(sq));
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            int const j = lane + 32 * i;
            if (j < dh)
            {
                xs[warp * dh + j] = v[i] * inv * toFloat(sigma[j]);
            }
        }
    }
    cpAsyncWait<kLaterGroups>(); // this thread's part of W~[h]
    __syncthreads();             // everyone's, and x_hat
    bool const gaussian = p.featureKind == RFA_FEATURES_GAUSSIAN;
    float const scale = featureScale(gaussian, D);
    for (int d = threadIdx.x; d < D; d += blockDim.x)
    {
        T const* const wr = wsm + d * stride;
        float pq = 0.f, pk = 0.f;
        for (int j = 0; j < dh; j += 2)
        {
            float2 const w2 = loadPair(wr + j);
            float2 const xq = *reinterpret_cast<float2 const*>(xs + j);
            float2 const xk = *reinterpret_cast<float2 const*>(xs + dh + j);
            pq = fmaf(xq.y, w2.y, fmaf(xq.x, w2.x, pq));
            pk = fmaf(xk.y, w2.y, fmaf(xk.x, w2.x, pk));
        }
        storeFeaturePair<T>(qk, d, D, gaussian, scale, pq, pk);
    }
    if (threadIdx.x == 0)
    {
        qk[F] = make_float2(0.f, 0.f);
    }
}

// Part 2 instead, where the projections were made before (p.proj, decode_attention_step.h): no W~, no
// normalisation pass, one round of loads.
template <typename T>
__device__ void mapProjectedFeatures(StepParams const& p, int b, int h, float2* qk)
{
    int const D = p.D, parts = p.projParts, width = D + 1;
    bool const gaussian = p.featureKind == RFA_FEATURES_GAUSSIAN;
    float const scale = featureScale(gaussian, D);
    float const* const pq = p.proj + ((size_t) b * p.H + h) * 2 * parts * width; // [2][parts][D + 1]
    float const* const pk = pq + parts * width;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
    {
        // every load issued before the first add: one memory round trip, not one per part
        float lq[kMaxProjParts], lk[kMaxProjParts], nq[kMaxProjParts], nk[kMaxProjParts];
#pragma unroll
        for (int m = 0; m < kMaxProjParts; ++m)
        {
            if (m < parts)
            {
                lq[m] = pq[m * width + d];
                lk[m] = pk[m * width + d];
                nq[m] = pq[m * width + D];
                nk[m] = pk[m * width + D];
            }
        }
        float xq = 0.f, xk = 0.f, sq = 0.f, sk = 0.f;
#pragma unroll
        for (int m = 0; m < kMaxProjParts; ++m)
        {
            if (m < parts)
            {
                xq += lq[m];
                xk += lk[m];
                sq += nq[m];
                sk += nk[m];
            }
        }
        storeFeaturePair<T>(qk, d, D, gaussian, scale, xq * inverseNorm(sq), xk * inverseNorm(sk));
    }
    if (threadIdx.x == 0)
    {
        qk[p.F] = make_float2(0.f, 0.f);
    }
}

// Part 3, after the kernel before has finished: phi(q) and phi(k) into qk (from p.proj where given, else projected
// here, kLaterGroups cp.async groups committed after W~'s), [v, 1] into vs ([Dv + 1]), the gate logit through the
// sigmoid as torch.sigmoid on a T tensor (fp32, rounded to T; 0 where p.g is null); returns whether the keep mask
// leaves entry b's state unchanged. v, the gate logit and the keep flag are requested before the features' inputs
// and used only after those: one L2 round trip for all of them, not one per input. All threads must call it.
template <typename T, int kLaterGroups>
__device__ __forceinline__ bool mapDecodeInputs(StepParams const& p, int b, int h, T const* q, T const* k, T const* v,
    float2* qk, float* vs, float* xs, T const* wsm, float& gate)
{
    int const Dv = p.Dv, i = threadIdx.x;
    T const vOwn = i < Dv ? v[i] : fromFloat<T>(1.f);
    T const gateLogit = p.g ? static_cast<T const*>(p.g)[(size_t) b * p.gBatchStride + h] : fromFloat<T>(0.f);
    long long const keepFlag = p.keepMask != nullptr ? p.keepMask[b] : 1; // compared only at the end
    if (p.proj)
    {
        mapProjectedFeatures<T>(p, b, h, qk);
    }
    else
    {
        mapFeatures<T, kLaterGroups>(p, q, k, h, qk, xs, wsm);
    }
    if (i <= Dv)
    {
        vs[i] = toFloat(vOwn);
    }
    for (int j = i + blockDim.x; j <= Dv; j += blockDim.x) // blocks narrower than Dv + 1
    {
        vs[j] = j < Dv ? toFloat(v[j]) : 1.f;
    }
    gate = p.g ? toFloat(fromFloat<T>(1.f / (1.f + expf(-toFloat(gateLogit))))) : 0.f;
    return keepFlag == 0;
}

// Launched early, the resident blocks' state requests (~12 MB at B64) reach the memory while the q/k/v GEMM
// before them still streams its weights, and that GEMM is on the critical path. Blocks in four groups wait
// 0, 0.5, 1 or 1.5 us before asking, so those requests do not arrive as one burst ahead of the GEMM's (the
// variants tried: BENCHMARKS.md, "Step kernel design choices").
__device__ __forceinline__ void staggerEarlyStateLoad()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    __nanosleep(500u * (blockIdx.x % 4));
#endif
}

} // namespace rfa
