// Chunked prefill of rfa::CausalGatedScan for fp16/bf16 on tensor cores (mma.sync m16n8k16, fp32
// accumulation), for F in {64, 128} and Dv in {64, 128}, except F = 128, Dv = 64 on sm_90a builds running on
// Hopper, which take the wgmma kernel (causal_gated_scan_chunk_wgmma.cu); other sizes and fp32 take the
// general kernel.
//
// One block of 8 warps per (b, h) walks the sequence in chunks of C = 64 steps, the math of the general
// kernel (causal_gated_scan_chunk.cu), with the value column of ones made explicit, V' = [V, 1]:
//   A    = (Q K^T) ⊙ D,  D[t, i] = exp(b_t - b_i) (1 - g_i) for i <= t       b: prefix sums of log g
//   [num, den] = diag(exp(b)) Q [S, z] + A V'
//   [S, z]     = exp(b_C) [S, z] + K^T diag(w) V',   w_i = exp(b_C - b_i) (1 - g_i)
// so the normaliser and z ride along as one extra 8-column mma tile. The fp32 state [S, z] lives in the
// warps' accumulator registers for the whole sequence (a T copy in shared memory feeds Q [S, z]); the
// scores are masked in registers; the inputs of the next chunks stream in with cp.async, and warp 0
// prepares the next chunk's gates, while this chunk is computed; outputs leave as 16-byte stores.
// Warp w: 16 rows of the chunk and value half w / 4 (half 1 also has the den tile) for the
// scores, Q S and A V; 16 rows of the state (and a column group when F < 128) for the update.
#include "chunk_common.cuh"
#include "scan_launch.h"

#include <cstdint>
#include <type_traits>

namespace rfa
{
namespace
{

constexpr int kC = kGateChunk;
constexpr int kWarpsMma = 8;
constexpr int kThreadsMma = 32 * kWarpsMma;
constexpr size_t kSharedLimit = 227 * 1024;

template <int F, int DV>
struct MmaPlan
{
    // Row strides in elements: V', [S, z] and the output tile have Dv + 8 columns (column Dv is the ones /
    // z / den column, the rest zeros); Q and K rows are padded by 16 bytes. Either way the 8 row addresses of
    // an ldmatrix fall in 8 different 16-byte bank groups.
    static constexpr int ldQ = F + 8;
    static constexpr int ldV = DV + 8;
    static constexpr int ldA = kC + 8;
    static constexpr int stageElems = 2 * kC * ldQ + kC * ldV; // Q, K, V' of one chunk
    static constexpr size_t stageBytes = size_t(stageElems) * 2;
    static constexpr size_t sBytes = size_t(F) * ldV * 2;     // [S, z] copy for Q [S, z]
    static constexpr size_t tileBytes = size_t(kC) * ldV * 2; // V' diag(w); staged output
    static constexpr size_t aBytes = size_t(kC) * ldA * 2;
    static constexpr int kGateFloats = 2 * (4 * kC + 4);      // gate terms of two chunks
    static constexpr int kFloats = kGateFloats + 3 * kC;      // + den, row max of the two value halves
    static constexpr size_t fixedBytes = sBytes + 2 * tileBytes + aBytes + kFloats * sizeof(float);
    static constexpr int stages = 3 * stageBytes + fixedBytes <= kSharedLimit ? 3 : 2;
    static constexpr size_t totalBytes = stages * stageBytes + fixedBytes;
    // State update: (F / 16) row blocks x stateGroups column groups = 8 warps; the last group owns z.
    static constexpr int stateGroups = kWarpsMma / (F / 16);
    static constexpr int stateCols = DV / stateGroups;
    static_assert(F % 16 == 0 && kWarpsMma % (F / 16) == 0, "F: 16 rows per warp, a divisor of 8 row blocks");
    static_assert(DV % 32 == 0 && stateCols % 16 == 0, "Dv: two value halves, 16-column ldmatrix tiles");
    static_assert(totalBytes <= kSharedLimit, "shared memory");
};

template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    else
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], void const* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddr(p))
                 : "memory");
}

__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], void const* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddr(p))
                 : "memory");
}

__device__ __forceinline__ void ldsm2(uint32_t& r0, uint32_t& r1, void const* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(smemAddr(p)) : "memory");
}

__device__ __forceinline__ void ldsm2t(uint32_t& r0, uint32_t& r1, void const* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(smemAddr(p)) : "memory");
}

template <typename T, int F, int DV>
__global__ void __launch_bounds__(kThreadsMma, 1) scanChunkMmaKernel(ChunkParams p)
{
    using P = MmaPlan<F, DV>;
    constexpr int ldQ = P::ldQ, ldV = P::ldV, ldA = P::ldA, kStages = P::stages;
    constexpr int kHalfCols = DV / 2; // value columns of a warp in Q S, A V and the readout
    constexpr int kHalfTiles = kHalfCols / 8;
    constexpr int kStateTiles = P::stateCols / 8;
    constexpr int kGateStride = kGateTermsStride;
    extern __shared__ __align__(128) unsigned char smem[];
    T* const stageBase = reinterpret_cast<T*>(smem);
    unsigned char* cursor = smem + kStages * P::stageBytes;
    T* const Ssm = reinterpret_cast<T*>(cursor);
    cursor += P::sBytes;
    T* const Vw = reinterpret_cast<T*>(cursor);
    cursor += P::tileBytes;
    T* const Osm = reinterpret_cast<T*>(cursor);
    cursor += P::tileBytes;
    T* const Asm = reinterpret_cast<T*>(cursor);
    cursor += P::aBytes;
    // Per chunk, double-buffered: [C] b log2(e), [C] 1 - g (0 past T), [C] exp(b), [C] w, [1] exp(b_C)
    float* const gateBuf = reinterpret_cast<float*>(cursor);
    float* const denS = gateBuf + 2 * kGateStride; // [C]
    float* const rowMax = denS + kC;               // [2][C] max |num| per value half

    int const tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    int const gid = lane >> 2, tig = lane & 3;
    int const h = blockIdx.x, b = blockIdx.y;
    int const T_ = p.T;
    bool const gated = p.g != nullptr;
    size_t const qkStride = size_t(p.H) * F, vStride = size_t(p.H) * DV;
    T const* const q = static_cast<T const*>(p.q) + size_t(b) * T_ * qkStride + size_t(h) * F;
    T const* const k = static_cast<T const*>(p.k) + size_t(b) * T_ * qkStride + size_t(h) * F;
    T const* const v = static_cast<T const*>(p.v) + size_t(b) * T_ * vStride + size_t(h) * DV;
    T const* const g = gated ? static_cast<T const*>(p.g) + size_t(b) * T_ * p.H + h : nullptr;
    T* const out = static_cast<T*>(p.out) + size_t(b) * T_ * vStride + size_t(h) * DV;
    int const chunks = (T_ + kC - 1) / kC;

    constexpr int qVecs = F / 8, qRowsPerPass = kThreadsMma / qVecs;
    constexpr int vVecs = DV / 8, vRowsPerPass = kThreadsMma / vVecs;
    static_assert(kC % qRowsPerPass == 0 && kC % vRowsPerPass == 0, "whole passes");
    int const qr0 = tid / qVecs, qc = (tid % qVecs) * 8, vr0 = tid / vVecs, vc = (tid % vVecs) * 8;

    auto issueLoad = [&](int n) {
        if (n < chunks)
        {
            T* const Qst = stageBase + (n % kStages) * P::stageElems;
            T* const Kst = Qst + kC * ldQ;
            T* const Vst = Kst + kC * ldQ;
            int const t0 = n * kC;
#pragma unroll
            for (int r = qr0; r < kC; r += qRowsPerPass)
            {
                bool const ok = t0 + r < T_;
                size_t const off = ok ? size_t(t0 + r) * qkStride + qc : 0;
                cpAsync16(Qst + r * ldQ + qc, q + off, ok);
                cpAsync16(Kst + r * ldQ + qc, k + off, ok);
            }
#pragma unroll
            for (int r = vr0; r < kC; r += vRowsPerPass)
            {
                bool const ok = t0 + r < T_;
                cpAsync16(Vst + r * ldV + vc, v + (ok ? size_t(t0 + r) * vStride + vc : 0), ok);
            }
        }
        cpAsyncCommit(); // one group per chunk slot, possibly empty, so wait_group counts stay uniform
    };

    auto storeOut = [&](int n) {
        int const t0 = n * kC;
#pragma unroll
        for (int r = vr0; r < kC; r += vRowsPerPass)
        {
            if (t0 + r < T_)
            {
                *reinterpret_cast<uint4*>(out + size_t(t0 + r) * vStride + vc) = *reinterpret_cast<uint4 const*>(Osm + r * ldV + vc);
            }
        }
    };

    // Warp 0 keeps the raw gates of the chunk after next in registers, so their load latency hides behind a
    // whole chunk, and turns them into the gate terms one chunk ahead.
    auto loadGates = [&](int n, T (&gv)[2]) { loadChunkGates(g, size_t(p.H), n, T_, gv); };
    auto computeGates = [&](int n, T const (&gv)[2]) { chunkGateTerms(gateBuf + (n & 1) * kGateStride, n, T_, gated, gv); };

    for (int n = 0; n < kStages - 1; ++n)
    {
        issueLoad(n);
    }
    T gReg[2];
    if (warp == 0)
    {
        primeChunkGates(g, size_t(p.H), T_, gated, gateBuf, gReg);
    }
    // Columns Dv .. Dv + 7 of V' in every stage (cp.async writes columns < Dv only) and of V' diag(w)
    // (column Dv is rewritten per chunk): ones / w, then zeros.
    for (int i = tid; i < (kStages + 1) * kC; i += kThreadsMma)
    {
        int const stage = i / kC, r = i % kC;
        T* const row = stage < kStages ? stageBase + stage * P::stageElems + 2 * kC * ldQ + r * ldV + DV : Vw + r * ldV + DV;
#pragma unroll
        for (int c = 0; c < 8; ++c)
        {
            row[c] = fromFloat<T>(c == 0 && stage < kStages ? 1.f : 0.f);
        }
    }

    // Initial state: warp w owns rows srb * 16 .. + 16 and columns scol0 .. + stateCols (plus the z tile,
    // columns Dv .. Dv + 7, in the last column group), in mma accumulator layout:
    // acc[j] = {(r, c), (r, c + 1), (r + 8, c), (r + 8, c + 1)}, r = srb*16 + gid, c = scol0 + 8j + 2 tig.
    int const srb = warp / P::stateGroups, sgroup = warp % P::stateGroups, scol0 = sgroup * P::stateCols;
    bool const zOwner = sgroup == P::stateGroups - 1;
    int const cols = DV + 1;
    size_t const stateBase = (size_t(b) * p.H + h) * F * cols;
    int const sr = srb * 16 + gid;
    float sAcc[kStateTiles][4];
    float zAcc[4] = {0.f, 0.f, 0.f, 0.f};
    {
        StateIn const s0 = p.stateIn + stateBase;
#pragma unroll
        for (int j = 0; j < kStateTiles; ++j)
        {
            int const c = scol0 + 8 * j + 2 * tig;
            sAcc[j][0] = p.stateIn ? s0[size_t(sr) * cols + c] : 0.f;
            sAcc[j][1] = p.stateIn ? s0[size_t(sr) * cols + c + 1] : 0.f;
            sAcc[j][2] = p.stateIn ? s0[size_t(sr + 8) * cols + c] : 0.f;
            sAcc[j][3] = p.stateIn ? s0[size_t(sr + 8) * cols + c + 1] : 0.f;
        }
        if (zOwner && tig == 0 && p.stateIn)
        {
            zAcc[0] = s0[size_t(sr) * cols + DV];
            zAcc[2] = s0[size_t(sr + 8) * cols + DV];
        }
    }
    auto storeStateCopy = [&]() {
#pragma unroll
        for (int j = 0; j < kStateTiles; ++j)
        {
            int const c = scol0 + 8 * j + 2 * tig;
            *reinterpret_cast<uint32_t*>(Ssm + sr * ldV + c) = pack2<T>(sAcc[j][0], sAcc[j][1]);
            *reinterpret_cast<uint32_t*>(Ssm + (sr + 8) * ldV + c) = pack2<T>(sAcc[j][2], sAcc[j][3]);
        }
        if (zOwner)
        {
            *reinterpret_cast<uint32_t*>(Ssm + sr * ldV + DV + 2 * tig) = pack2<T>(zAcc[0], zAcc[1]);
            *reinterpret_cast<uint32_t*>(Ssm + (sr + 8) * ldV + DV + 2 * tig) = pack2<T>(zAcc[2], zAcc[3]);
        }
    };
    storeStateCopy();

    // Warps w and w + 4 share a scheduler: pairing row block r with 3 - r evens out the causal work.
    int const half = warp >> 2, rb = half == 0 ? (warp & 3) : 3 - (warp & 3);
    int const tA = rb * 16 + gid, tB = tA + 8;

    for (int n = 0; n < chunks; ++n)
    {
        cpAsyncWait<kStages - 2>(); // this thread's copies of chunk n have landed
        __syncthreads();            // ... and everyone's; chunk n - 1 is completely done
        if (n > 0)
        {
            storeOut(n - 1);
        }
        issueLoad(n + kStages - 1); // into the stage chunk n - 1 used
        T const* const Qst = stageBase + (n % kStages) * P::stageElems;
        T const* const Kst = Qst + kC * ldQ;
        T const* const Vst = Kst + kC * ldQ;
        float const* const gb = gateBuf + (n & 1) * kGateStride;
        float const* const bl2 = gb;
        float const* const keyScale = gb + kC;
        float const* const fromStart = gb + 2 * kC;
        float const* const wgt = gb + 3 * kC;

        // 1. V' diag(w) for the state update
        for (int i = tid; i < kC * vVecs; i += kThreadsMma)
        {
            int const r = i / vVecs, c = (i % vVecs) * 8;
            uint4 x = *reinterpret_cast<uint4 const*>(Vst + r * ldV + c);
            T* const e = reinterpret_cast<T*>(&x);
            float const w = wgt[r];
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                e[j] = fromFloat<T>(toFloat(e[j]) * w);
            }
            *reinterpret_cast<uint4*>(Vw + r * ldV + c) = x;
        }
        if (tid < kC)
        {
            Vw[tid * ldV + DV] = fromFloat<T>(wgt[tid]);
        }

        // 2. Q fragments of this warp's 16 rows (reused by the scores and by Q [S, z])
        uint32_t qf[F / 16][4];
#pragma unroll
        for (int kk = 0; kk < F / 16; ++kk)
        {
            ldsm4(qf[kk], Qst + (rb * 16 + (lane & 15)) * ldQ + kk * 16 + (lane >> 4) * 8);
        }

        // 3. scores of rows rb: keys 0 .. 16 (rb + 1), split by 8-key tiles between the two value halves;
        // masked and decayed in registers, rounded to T once, into A
        auto scores = [&](auto tileCount) {
            constexpr int kTiles = decltype(tileCount)::value;
            int const tile0 = half * kTiles;
            float sc[kTiles][4];
#pragma unroll
            for (int j = 0; j < kTiles; ++j)
            {
                sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
            }
#pragma unroll
            for (int kk = 0; kk < F / 16; ++kk)
            {
#pragma unroll
                for (int j = 0; j < kTiles; ++j)
                {
                    uint32_t b0, b1;
                    ldsm2(b0, b1, Kst + ((tile0 + j) * 8 + (lane & 7)) * ldQ + kk * 16 + ((lane >> 3) & 1) * 8);
                    mma16816<T>(sc[j], qf[kk], b0, b1);
                }
            }
            float const bA = bl2[tA], bB = bl2[tB];
#pragma unroll
            for (int j = 0; j < kTiles; ++j)
            {
                int const key = (tile0 + j) * 8 + 2 * tig;
                float dA[2], dB[2];
#pragma unroll
                for (int e = 0; e < 2; ++e)
                {
                    float const ks = keyScale[key + e];
                    float const bk = bl2[key + e];
                    dA[e] = key + e <= tA ? (gated ? fastExp2(bA - bk) * ks : ks) : 0.f;
                    dB[e] = key + e <= tB ? (gated ? fastExp2(bB - bk) * ks : ks) : 0.f;
                }
                *reinterpret_cast<uint32_t*>(Asm + tA * ldA + key) = pack2<T>(sc[j][0] * dA[0], sc[j][1] * dA[1]);
                *reinterpret_cast<uint32_t*>(Asm + tB * ldA + key) = pack2<T>(sc[j][2] * dB[0], sc[j][3] * dB[1]);
            }
        };
        switch (rb)
        {
        case 0: scores(std::integral_constant<int, 1>{}); break;
        case 1: scores(std::integral_constant<int, 2>{}); break;
        case 2: scores(std::integral_constant<int, 3>{}); break;
        default: scores(std::integral_constant<int, 4>{}); break;
        }

        // 4. [num, den] = diag(exp(b)) Q [S, z], the state before this chunk; half 1 also does the den tile
        float nacc[kHalfTiles][4];
        float dAcc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < kHalfTiles; ++j)
        {
            nacc[j][0] = nacc[j][1] = nacc[j][2] = nacc[j][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < F / 16; ++kk)
        {
            T const* const row = Ssm + (kk * 16 + (lane & 15)) * ldV;
#pragma unroll
            for (int jj = 0; jj < kHalfTiles / 2; ++jj)
            {
                uint32_t bs[4];
                ldsm4t(bs, row + half * kHalfCols + jj * 16 + (lane >> 4) * 8);
                mma16816<T>(nacc[2 * jj], qf[kk], bs[0], bs[1]);
                mma16816<T>(nacc[2 * jj + 1], qf[kk], bs[2], bs[3]);
            }
            if (half == 1)
            {
                uint32_t b0, b1;
                ldsm2t(b0, b1, row + DV);
                mma16816<T>(dAcc, qf[kk], b0, b1);
            }
        }
        {
            float const fA = fromStart[tA], fB = fromStart[tB];
#pragma unroll
            for (int j = 0; j < kHalfTiles; ++j)
            {
                nacc[j][0] *= fA;
                nacc[j][1] *= fA;
                nacc[j][2] *= fB;
                nacc[j][3] *= fB;
            }
            dAcc[0] *= fA;
            dAcc[1] *= fA;
            dAcc[2] *= fB;
            dAcc[3] *= fB;
        }
        __syncthreads(); // A and V' diag(w) are complete; nobody reads the old state copy any more

        // 5. [num, den] += A V' (keys up to the diagonal block only)
        for (int kk = 0; kk <= rb; ++kk)
        {
            uint32_t af[4];
            ldsm4(af, Asm + (rb * 16 + (lane & 15)) * ldA + kk * 16 + (lane >> 4) * 8);
            T const* const row = Vst + (kk * 16 + (lane & 15)) * ldV;
#pragma unroll
            for (int jj = 0; jj < kHalfTiles / 2; ++jj)
            {
                uint32_t bv[4];
                ldsm4t(bv, row + half * kHalfCols + jj * 16 + (lane >> 4) * 8);
                mma16816<T>(nacc[2 * jj], af, bv[0], bv[1]);
                mma16816<T>(nacc[2 * jj + 1], af, bv[2], bv[3]);
            }
            if (half == 1)
            {
                uint32_t b0, b1;
                ldsm2t(b0, b1, row + DV);
                mma16816<T>(dAcc, af, b0, b1);
            }
        }

        // 6. state update in registers, [S, z] = exp(b_C) [S, z] + K^T V' diag(w); then its T copy
        {
            float const lam = gb[4 * kC];
#pragma unroll
            for (int j = 0; j < kStateTiles; ++j)
            {
                sAcc[j][0] *= lam;
                sAcc[j][1] *= lam;
                sAcc[j][2] *= lam;
                sAcc[j][3] *= lam;
            }
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                zAcc[e] *= lam;
            }
#pragma unroll
            for (int kk = 0; kk < kC / 16; ++kk)
            {
                uint32_t ak[4]; // K^T rows srb*16 .., keys kk*16 ..
                ldsm4t(ak, Kst + (kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * ldQ + srb * 16 + ((lane >> 3) & 1) * 8);
                T const* const row = Vw + (kk * 16 + (lane & 15)) * ldV;
#pragma unroll
                for (int jj = 0; jj < kStateTiles / 2; ++jj)
                {
                    uint32_t bv[4];
                    ldsm4t(bv, row + scol0 + jj * 16 + (lane >> 4) * 8);
                    mma16816<T>(sAcc[2 * jj], ak, bv[0], bv[1]);
                    mma16816<T>(sAcc[2 * jj + 1], ak, bv[2], bv[3]);
                }
                if (zOwner)
                {
                    uint32_t b0, b1;
                    ldsm2t(b0, b1, row + DV);
                    mma16816<T>(zAcc, ak, b0, b1);
                }
            }
            storeStateCopy();
        }

        // 7. warp 0: the next chunk's gate terms (the other buffer; its last readers finished before the
        // barrier at the top of this chunk)
        if (warp == 0 && n + 1 < chunks)
        {
            computeGates(n + 1, gReg);
            loadGates(n + 2, gReg);
        }

        // 8. row max of |num| over this warp's value half; den
        {
            float mA = 0.f, mB = 0.f;
#pragma unroll
            for (int j = 0; j < kHalfTiles; ++j)
            {
                mA = fmaxf(mA, fmaxf(fabsf(nacc[j][0]), fabsf(nacc[j][1])));
                mB = fmaxf(mB, fmaxf(fabsf(nacc[j][2]), fabsf(nacc[j][3])));
            }
            mA = quadMax(mA);
            mB = quadMax(mB);
            if (tig == 0)
            {
                rowMax[half * kC + tA] = mA;
                rowMax[half * kC + tB] = mB;
                if (half == 1)
                {
                    denS[tA] = dAcc[0];
                    denS[tB] = dAcc[2];
                }
            }
        }
        __syncthreads();

        // 9. readout into the output tile
        {
            float const scA = readoutScale(denS[tA], fmaxf(rowMax[tA], rowMax[kC + tA]), p.eps);
            float const scB = readoutScale(denS[tB], fmaxf(rowMax[tB], rowMax[kC + tB]), p.eps);
#pragma unroll
            for (int j = 0; j < kHalfTiles; ++j)
            {
                int const c = half * kHalfCols + 8 * j + 2 * tig;
                *reinterpret_cast<uint32_t*>(Osm + tA * ldV + c) = pack2<T>(nacc[j][0] * scA, nacc[j][1] * scA);
                *reinterpret_cast<uint32_t*>(Osm + tB * ldV + c) = pack2<T>(nacc[j][2] * scB, nacc[j][3] * scB);
            }
        }
    }
    cpAsyncWait<0>();
    __syncthreads();
    storeOut(chunks - 1);
    {
        StateOut const s1 = p.stateOut + stateBase;
#pragma unroll
        for (int j = 0; j < kStateTiles; ++j)
        {
            int const c = scol0 + 8 * j + 2 * tig;
            s1[size_t(sr) * cols + c] = sAcc[j][0];
            s1[size_t(sr) * cols + c + 1] = sAcc[j][1];
            s1[size_t(sr + 8) * cols + c] = sAcc[j][2];
            s1[size_t(sr + 8) * cols + c + 1] = sAcc[j][3];
        }
        if (zOwner && tig == 0)
        {
            s1[size_t(sr) * cols + DV] = zAcc[0];
            s1[size_t(sr + 8) * cols + DV] = zAcc[2];
        }
    }
}

template <typename T, int F, int DV>
cudaError_t launchMma(ChunkParams const& p, cudaStream_t stream)
{
    using P = MmaPlan<F, DV>;
    auto kernel = scanChunkMmaKernel<T, F, DV>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(P::totalBytes));
    if (e != cudaSuccess)
    {
        return e;
    }
    kernel<<<dim3(p.H, p.B), kThreadsMma, P::totalBytes, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchMmaTyped(ChunkParams const& p, cudaStream_t stream)
{
    if (p.F == 128)
    {
        return p.Dv == 64 ? launchMma<T, 128, 64>(p, stream) : launchMma<T, 128, 128>(p, stream);
    }
    return p.Dv == 64 ? launchMma<T, 64, 64>(p, stream) : launchMma<T, 64, 128>(p, stream);
}

} // namespace

bool chunkMmaSupports(int F, int Dv, int dtype)
{
    return dtype != 0 && (F == 64 || F == 128) && (Dv == 64 || Dv == 128);
}

cudaError_t launchChunkMma(ChunkParams const& p, int dtype, cudaStream_t stream)
{
    return dtype == 1 ? launchMmaTyped<__half>(p, stream) : launchMmaTyped<__nv_bfloat16>(p, stream);
}

} // namespace rfa
