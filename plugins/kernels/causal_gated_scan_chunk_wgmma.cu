// Chunked prefill of rfa::CausalGatedScan on Hopper warpgroup MMA (wgmma) and TMA (sm_90a) for F = 128,
// Dv = 64 and fp16/bf16, the model's head shape; other sizes take causal_gated_scan_chunk_mma.cu. The math is
// that kernel's, chunks of C = 64 steps:
//   A          = (Q K^T) ⊙ D,  D[t, i] = exp(b_t - b_i) (1 - g_i) for i <= t       b: prefix sums of log g
//   [num, den] = diag(exp(b)) Q [S, z] + A [V, 1]
//   [S, z]     = exp(b_C) [S, z] + K^T diag(w) [V, 1],   w_i = exp(b_C - b_i) (1 - g_i)
// One block per (b, h): two consumer warpgroups and a producer warp. Per chunk, between two barriers:
// warpgroup 0 computes the scores, masks and decays them in registers and multiplies them (as the A operand,
// from registers) into [V, 1]; warpgroup 1 computes Q [S, z] from the 16-bit copy of the state and, behind
// it, reads out the previous chunk and scales V by w. Then each warpgroup updates 64 rows of the fp32 [S, z],
// which lives in its accumulators for the whole sequence (K^T is read M-major from the tile that fed the
// scores). The normaliser column rides along as column 64 of width-72 products. The producer warp keeps
// everything else off that path: TMA loads of Q, K, V into 128-byte-swizzled tiles of a three-stage ring (one
// mbarrier a stage), the TMA store of each output tile, and the next chunk's gate terms.
#include "chunk_common.cuh"
#include "scan_launch.h"
#include "tma.cuh"
#include "wgmma.cuh"

namespace rfa
{

namespace
{

constexpr int kCw = kGateChunk, kFw = 128, kDvw = 64, kStagesW = 3, kThreadsW = 288; // 2 warpgroups + the producer warp
constexpr uint32_t kTile = 64 * 128;               // one [64][64] swizzled tile, bytes
constexpr uint32_t kStageBytes = 5 * kTile;        // Q and K (two column blocks each), V
constexpr uint32_t kOffS = kStagesW * kStageBytes; // T copy of S: [128 f][64] swizzled
constexpr uint32_t kOffVw = kOffS + 2 * kTile;     // V diag(w)
// Column 64 of the width-72 B operands, as the second 64-column block of a swizzled MN-major tile (reached
// through the descriptor's leading byte offset): z beside S, w beside V diag(w), ones beside V. Only that
// column is ever written; the rest stays zero.
constexpr uint32_t kOffZx = kOffVw + kTile;        // [128 f]
constexpr uint32_t kOffWx = kOffZx + 2 * kTile;    // [64 keys]
constexpr uint32_t kOffOnesx = kOffWx + kTile;     // [64 keys]
constexpr int kLdNum = kDvw + 8;
constexpr uint32_t kNumBytes = kCw * kLdNum * 4;
constexpr uint32_t kOffNum = kOffOnesx + kTile; // A V partial, fp32 [64][kLdNum], two buffers (chunk parity)
constexpr uint32_t kOffDen = kOffNum + 2 * kNumBytes; // its normaliser column, two buffers
constexpr uint32_t kOffOut = (kOffDen + 2 * kCw * 4 + 1023u) & ~1023u; // output tile, swizzled [64][64] (TMA store)
constexpr int kGateStrideW = kGateTermsStride;
constexpr uint32_t kOffGates = kOffOut + kTile;
constexpr uint32_t kOffBars = kOffGates + 2 * kGateStrideW * 4;   // one mbarrier per stage
constexpr uint32_t kSmemW = kOffBars + kStagesW * 8 + 1024;       // + slack to align the base to 1 KB
static_assert(kSmemW <= 227 * 1024, "shared memory");

// The sequence split. Where few (b, h) would leave most of the device idle, the sequence is cut into segments
// of whole chunks, one block each (blockIdx.z), in three launches: each segment's own state from a zero
// start (pass 1, no output); combineSegmentStarts turns those into every segment's start state; then each
// segment runs again from its start state and writes its outputs (pass 2). Without a split: one segment,
// pass 0.
struct SegmentPlan
{
    int chunks; // per segment; the last may have fewer
    int pass;
    // [segments][B][H][F][Dv + 1] fp32: pass 1 writes segment s's own state at s + 1; after the combine,
    // entry s is segment s's start state (entry 0 the initial state)
    float* starts;
};

// kStateOnly: pass 1 of a sequence split, which reads no Q and computes no output, only the state (its own
// instantiation: the code of the other passes stays as it is)
template <typename T, bool kStateOnly>
__global__ void __launch_bounds__(kThreadsW, 1) scanChunkWgmmaKernel(ChunkParams p, SegmentPlan plan, __grid_constant__ CUtensorMap const mapQ,
    __grid_constant__ CUtensorMap const mapK, __grid_constant__ CUtensorMap const mapV, __grid_constant__ CUtensorMap const mapOut)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smemRaw[];
    unsigned char* const smem = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);
    unsigned char* const sCopy = smem + kOffS;
    unsigned char* const vw = smem + kOffVw;
    unsigned char* const zExt = smem + kOffZx;
    unsigned char* const wExt = smem + kOffWx;
    unsigned char* const onesExt = smem + kOffOnesx;
    float* const numBufs = reinterpret_cast<float*>(smem + kOffNum);
    float* const denBufs = reinterpret_cast<float*>(smem + kOffDen);
    unsigned char* const Osm = smem + kOffOut;
    uint64_t* const full = reinterpret_cast<uint64_t*>(smem + kOffBars);
    float* const gateBuf = reinterpret_cast<float*>(smem + kOffGates);

    int const tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    int const gid = lane >> 2, tig = lane & 3, wg = warp >> 2, wq = warp & 3;
    int const r0 = 16 * wq + gid, r1 = r0 + 8; // accumulator rows of this thread
    int const h = blockIdx.x, b = blockIdx.y;
    int const seg = blockIdx.z, chunk0 = seg * plan.chunks;
    int const chunks = min(plan.chunks, (p.T + kCw - 1) / kCw - chunk0);
    int const T_ = min(p.T - chunk0 * kCw, chunks * kCw); // steps of this segment
    bool const gated = p.g != nullptr;
    T const* const g = gated ? static_cast<T const*>(p.g) + (size_t(b) * p.T + size_t(chunk0) * kCw) * p.H + h : nullptr;

    // By the producer warp's lane 0: chunk n's Q, K (two 64-column boxes each) and V into stage n % 3, rows
    // past T zero-filled by the tensor map; completion counted on that stage's mbarrier.
    auto issueLoad = [&](int n) {
        if (n < chunks)
        {
            int const s = n % kStagesW;
            unsigned char* const st = smem + s * kStageBytes;
            if constexpr (kStateOnly)
            {
                tmaExpectTx(full + s, kStageBytes - 2 * kTile);
            }
            else
            {
                tmaExpectTx(full + s, kStageBytes);
                tmaLoad3d(st, &mapQ, full + s, h * kFw, (chunk0 + n) * kCw, b);
                tmaLoad3d(st + kTile, &mapQ, full + s, h * kFw + 64, (chunk0 + n) * kCw, b);
            }
            tmaLoad3d(st + 2 * kTile, &mapK, full + s, h * kFw, (chunk0 + n) * kCw, b);
            tmaLoad3d(st + 3 * kTile, &mapK, full + s, h * kFw + 64, (chunk0 + n) * kCw, b);
            tmaLoad3d(st + 4 * kTile, &mapV, full + s, h * kDvw, (chunk0 + n) * kCw, b);
        }
    };
    // By the producer warp's lane 0: the output tile of chunk n (rows past T clipped by the tensor map).
    auto storeOut = [&](int n) {
        tmaStore3d(&mapOut, Osm, h * kDvw, (chunk0 + n) * kCw, b);
        tmaStoreCommit();
    };

    // The producer warp keeps the raw gates of the chunk after next in registers (unconverted, so the load's
    // latency stays hidden) and turns them into the gate terms one chunk ahead.
    bool const producer = warp == 8;
    T gRaw[2];
    auto loadGates = [&](int n) { loadChunkGates(g, size_t(p.H), n, T_, gRaw); };
    auto computeGates = [&](int n) { chunkGateTerms(gateBuf + (n & 1) * kGateStrideW, n, T_, gated, gRaw); };

    if (producer)
    {
        if (lane == 0)
        {
            for (int s = 0; s < kStagesW; ++s)
            {
                mbarrierInit(full + s, 1);
            }
            fenceMbarrierInit();
            for (int n = 0; n < kStagesW - 1; ++n)
            {
                issueLoad(n);
            }
        }
        loadGates(0);
        computeGates(0);
        loadGates(1);
    }
    // the column-64 blocks: zeros, but ones in the ones block (the normaliser of A [V, 1])
    for (int i = tid; i < 4 * kTile / 16; i += kThreadsW)
    {
        int const row = (i / 8) % kCw, chunk = i % 8; // in the ones block (the last 8 KB): its row, 16-byte chunk
        T e[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            e[j] = fromFloat<T>(i >= 3 * kTile / 16 && chunk == (row & 7) && j == 0 ? 1.f : 0.f);
        }
        *reinterpret_cast<uint4*>(zExt + 16 * i) = *reinterpret_cast<uint4 const*>(e);
    }
    fenceProxyAsync();
    __syncthreads(); // the zeros land before the z copy's column 0; the producer's prologue is done

    if (producer)
    {
        // per chunk, in step with the consumers' two barriers: in the first phase the loads of chunk n + 2
        // (into the stage chunk n - 1 used) and the gate terms of chunk n + 1; in the second the store of the
        // output tile of chunk n - 1
        for (int n = 0; n < chunks; ++n)
        {
            __syncthreads();
            if (lane == 0)
            {
                issueLoad(n + kStagesW - 1);
            }
            if (n + 1 < chunks)
            {
                computeGates(n + 1);
                loadGates(n + 2);
            }
            __syncthreads();
            if (lane == 0 && n > 0 && plan.pass != 1)
            {
                storeOut(n - 1);    // read out during this chunk's first phase
                tmaStoreWaitRead(); // the next readout rewrites the tile after the next barrier
            }
        }
        __syncthreads(); // the consumers' two barriers around the last readout
        __syncthreads();
        if (lane == 0)
        {
            if (plan.pass != 1)
            {
                storeOut(chunks - 1);
            }
            tmaStoreWaitAll();
        }
        return;
    }

    // The state: warpgroup wg owns rows f = 64 wg + r0 / r1, in the m64n72 accumulator layout
    // (sAcc[4j + e]: row r0 (e < 2) or r1, column 8j + 2 tig + e % 2), z in column 64.
    int const f0 = 64 * wg + r0, f1 = 64 * wg + r1;
    int const cols = kDvw + 1;
    size_t const slab = (size_t(b) * p.H + h) * kFw * cols;
    size_t const segStride = size_t(p.B) * p.H * kFw * cols;
    // the split's segment starts (plan.starts) are fp32 workspace; only the op's own state may be bf16
    StateIn const stateIn = plan.pass == 0 ? p.stateIn
        : StateIn{plan.pass == 1 ? nullptr : plan.starts + seg * segStride, false};
    StateOut const stateOut = plan.pass == 0 ? p.stateOut
        : (plan.pass == 1 ? StateOut{plan.starts + (seg + 1) * segStride, false}
                          : (seg + 1 == int(gridDim.z) ? p.stateOut : StateOut{nullptr, false}));
    float sAcc[36]; // [S, z]: z in column 64 (sAcc[32] row r0, sAcc[34] row r1, where tig == 0)
    sAcc[32] = sAcc[33] = sAcc[34] = sAcc[35] = 0.f;
    {
        StateIn const s0 = stateIn + slab;
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            sAcc[4 * j + 0] = stateIn ? s0[size_t(f0) * cols + c] : 0.f;
            sAcc[4 * j + 1] = stateIn ? s0[size_t(f0) * cols + c + 1] : 0.f;
            sAcc[4 * j + 2] = stateIn ? s0[size_t(f1) * cols + c] : 0.f;
            sAcc[4 * j + 3] = stateIn ? s0[size_t(f1) * cols + c + 1] : 0.f;
        }
        if (tig == 0 && stateIn)
        {
            sAcc[32] = s0[size_t(f0) * cols + kDvw];
            sAcc[34] = s0[size_t(f1) * cols + kDvw];
        }
    }
    auto storeStateCopy = [&]() {
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            *reinterpret_cast<uint32_t*>(sCopy + swizzled(f0, c)) = pack2<T>(sAcc[4 * j], sAcc[4 * j + 1]);
            *reinterpret_cast<uint32_t*>(sCopy + swizzled(f1, c)) = pack2<T>(sAcc[4 * j + 2], sAcc[4 * j + 3]);
        }
        if (tig == 0)
        {
            *reinterpret_cast<T*>(zExt + swizzled(f0, 0)) = fromFloat<T>(sAcc[32]);
            *reinterpret_cast<T*>(zExt + swizzled(f1, 0)) = fromFloat<T>(sAcc[34]);
        }
        fenceProxyAsync(); // read by wgmma (async proxy) after the next barrier
    };
    storeStateCopy();

    // Warpgroup 1: chunk n's output rows from its Q [S, z] part (prev, scaled) and warpgroup 0's A [V, 1]
    // part, into the output tile
    float prev[36] = {};
    auto readout = [&](int n) {
        float const* const numBuf = numBufs + (n & 1) * (kNumBytes / 4);
        float const* const denBuf = denBufs + (n & 1) * kCw;
        float const den0 = __shfl_sync(0xffffffffu, prev[32], lane & ~3) + denBuf[r0];
        float const den1 = __shfl_sync(0xffffffffu, prev[34], lane & ~3) + denBuf[r1];
        float m0 = 0.f, m1 = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            float2 const a = *reinterpret_cast<float2 const*>(numBuf + r0 * kLdNum + c);
            float2 const bq = *reinterpret_cast<float2 const*>(numBuf + r1 * kLdNum + c);
            prev[4 * j] += a.x;
            prev[4 * j + 1] += a.y;
            prev[4 * j + 2] += bq.x;
            prev[4 * j + 3] += bq.y;
            m0 = fmaxf(m0, fmaxf(fabsf(prev[4 * j]), fabsf(prev[4 * j + 1])));
            m1 = fmaxf(m1, fmaxf(fabsf(prev[4 * j + 2]), fabsf(prev[4 * j + 3])));
        }
        float const sc0 = readoutScale(den0, quadMax(m0), p.eps);
        float const sc1 = readoutScale(den1, quadMax(m1), p.eps);
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            *reinterpret_cast<uint32_t*>(Osm + swizzled(r0, c)) = pack2<T>(prev[4 * j] * sc0, prev[4 * j + 1] * sc0);
            *reinterpret_cast<uint32_t*>(Osm + swizzled(r1, c)) = pack2<T>(prev[4 * j + 2] * sc1, prev[4 * j + 3] * sc1);
        }
    };

    for (int n = 0; n < chunks; ++n)
    {
        __syncthreads(); // chunk n - 1 is completely done
        mbarrierWait(full + n % kStagesW, (n / kStagesW) & 1); // chunk n's tiles have landed
        unsigned char* const st = smem + (n % kStagesW) * kStageBytes;
        unsigned char* const Qst = st;
        unsigned char* const Kst = st + 2 * kTile;
        unsigned char* const Vst = st + 4 * kTile;
        float const* const gb = gateBuf + (n & 1) * kGateStrideW;
        float const* const bl2 = gb;
        float const* const keyScale = gb + kCw;
        float const* const fromStart = gb + 2 * kCw;
        float const* const wgt = gb + 3 * kCw;
        // K-major operands (rows M/N, 16 K-columns a step): Q and K, columns kk * 16 of 128
        auto descQK = [&](unsigned char const* base, int kk) {
            return matrixDesc(base + (kk >> 2) * kTile + (kk & 3) * 32, 16, 1024);
        };
        auto descMn = [&](unsigned char const* base, int kk) { // MN-major, 16 K-rows a step
            return matrixDesc(base + kk * 2048, 8192, 1024);
        };
        auto descMn72 = [&](unsigned char const* base, unsigned char const* ext, int kk) { // ... 72 wide
            return matrixDesc(base + kk * 2048, uint32_t(ext - base), 1024);
        };

        float nx[36]; // [num, den]: den in column 64 (nx[32] row r0, nx[34] row r1, where tig == 0)
        if constexpr (kStateOnly)
        {
            // no scores, no readout: only V diag(w) and w (rounded to T) for the state update, by all 256
            // (warpgroup 1's loop below, written out again: a shared helper changes that path's generated code)
            for (int i = tid; i < kCw * 8; i += 256)
            {
                int const row = i >> 3;
                uint32_t const off = swizzled(row, (i & 7) * 8);
                uint4 x = *reinterpret_cast<uint4 const*>(Vst + off);
                T* const e = reinterpret_cast<T*>(&x);
                float const w = wgt[row];
#pragma unroll
                for (int j = 0; j < 8; ++j)
                {
                    e[j] = fromFloat<T>(toFloat(e[j]) * w);
                }
                *reinterpret_cast<uint4*>(vw + off) = x;
            }
            if (tid < kCw)
            {
                *reinterpret_cast<T*>(wExt + swizzled(tid, 0)) = fromFloat<T>(wgt[tid]);
            }
            fenceProxyAsync();
        }
        else if (wg == 0)
        {
            // scores of all 64 x 64 pairs; masked and decayed in registers, then the A operand of A [V, 1]
            float sc[32];
            zeroRegisters(sc);
            wgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kFw / 16; ++kk)
            {
                wgmmaSS64<T, 0, 0>(sc, descQK(Qst, kk), descQK(Kst, kk));
            }
            wgmmaCommit();
            // while the scores are computed: the decay factors
            float const bA = bl2[r0], bB = bl2[r1];
            float dA[16], dB[16];
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                int const key = 8 * j + 2 * tig;
#pragma unroll
                for (int e = 0; e < 2; ++e)
                {
                    float const ks = keyScale[key + e];
                    float const bk = bl2[key + e];
                    dA[2 * j + e] = key + e <= r0 ? (gated ? fastExp2(bA - bk) * ks : ks) : 0.f;
                    dB[2 * j + e] = key + e <= r1 ? (gated ? fastExp2(bB - bk) * ks : ks) : 0.f;
                }
            }
            wgmmaWaitAll();
            pinRegisters(sc);
            uint32_t af[4][4];
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                af[j >> 1][(j & 1) * 2] = pack2<T>(sc[4 * j] * dA[2 * j], sc[4 * j + 1] * dA[2 * j + 1]);
                af[j >> 1][(j & 1) * 2 + 1] = pack2<T>(sc[4 * j + 2] * dB[2 * j], sc[4 * j + 3] * dB[2 * j + 1]);
            }
            zeroRegisters(nx);
            wgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kCw / 16; ++kk)
            {
                wgmmaRS72<T, 1>(nx, af[kk], descMn72(Vst, onesExt, kk));
            }
            wgmmaCommit();
            wgmmaWaitAll();
            pinRegisters(nx);
            float* const numBuf = numBufs + (n & 1) * (kNumBytes / 4);
            float* const denBuf = denBufs + (n & 1) * kCw;
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                int const c = 8 * j + 2 * tig;
                *reinterpret_cast<float2*>(numBuf + r0 * kLdNum + c) = make_float2(nx[4 * j], nx[4 * j + 1]);
                *reinterpret_cast<float2*>(numBuf + r1 * kLdNum + c) = make_float2(nx[4 * j + 2], nx[4 * j + 3]);
            }
            if (tig == 0)
            {
                denBuf[r0] = nx[32];
                denBuf[r1] = nx[34];
            }
        }
        else
        {
            // diag(exp(b)) Q [S, z]; while it runs: V diag(w) and w (rounded to T) for the state update
            zeroRegisters(nx);
            wgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kFw / 16; ++kk)
            {
                wgmmaSS72<T, 0, 1>(nx, descQK(Qst, kk), descMn72(sCopy, zExt, kk));
            }
            wgmmaCommit();
            if (n > 0)
            {
                readout(n - 1); // behind this chunk's Q [S, z]
            }
            int const t1 = tid - 128;
            for (int i = t1; i < kCw * 8; i += 128)
            {
                int const row = i >> 3;
                uint32_t const off = swizzled(row, (i & 7) * 8);
                uint4 x = *reinterpret_cast<uint4 const*>(Vst + off);
                T* const e = reinterpret_cast<T*>(&x);
                float const w = wgt[row];
#pragma unroll
                for (int j = 0; j < 8; ++j)
                {
                    e[j] = fromFloat<T>(toFloat(e[j]) * w);
                }
                *reinterpret_cast<uint4*>(vw + off) = x;
            }
            if (t1 < kCw)
            {
                *reinterpret_cast<T*>(wExt + swizzled(t1, 0)) = fromFloat<T>(wgt[t1]);
            }
            fenceProxyAsync();
            wgmmaWaitAll();
            pinRegisters(nx);
            float const fA = fromStart[r0], fB = fromStart[r1];
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                nx[4 * j] *= fA;
                nx[4 * j + 1] *= fA;
                nx[4 * j + 2] *= fB;
                nx[4 * j + 3] *= fB;
            }
            nx[32] *= fA;
            nx[34] *= fB;
#pragma unroll
            for (int i = 0; i < 36; ++i)
            {
                prev[i] = nx[i];
            }
        }
        __syncthreads(); // V diag(w), w and the A V partial are complete; nobody reads the state copy any more

        // [S, z] = exp(b_C) [S, z] + K^T diag(w) [V, 1], rows 64 wg .. 64 wg + 63
        {
            float const lam = gb[4 * kCw];
#pragma unroll
            for (int i = 0; i < 36; ++i)
            {
                sAcc[i] *= lam;
            }
            pinRegisters(sAcc);
            wgmmaFence();
            unsigned char const* const kT = Kst + wg * kTile; // features 64 wg .., keys along the rows
#pragma unroll
            for (int kk = 0; kk < kCw / 16; ++kk)
            {
                wgmmaSS72<T, 1, 1>(sAcc, descMn(kT, kk), descMn72(vw, wExt, kk));
            }
            wgmmaCommit();
        }
        wgmmaWaitAll();
        pinRegisters(sAcc);
        if constexpr (!kStateOnly)
        {
            storeStateCopy();
        }
    }
    __syncthreads(); // the last chunk's A [V, 1] part is complete
    if (wg == 1 && !kStateOnly)
    {
        readout(chunks - 1);
        fenceProxyAsync();
    }
    __syncthreads(); // the last output tile is complete (the producer stores it)
    if (stateOut)
    {
        StateOut const s1 = stateOut + slab;
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            s1[size_t(f0) * cols + c] = sAcc[4 * j];
            s1[size_t(f0) * cols + c + 1] = sAcc[4 * j + 1];
            s1[size_t(f1) * cols + c] = sAcc[4 * j + 2];
            s1[size_t(f1) * cols + c + 1] = sAcc[4 * j + 3];
        }
        if (tig == 0)
        {
            s1[size_t(f0) * cols + kDvw] = sAcc[32];
            s1[size_t(f1) * cols + kDvw] = sAcc[34];
        }
    }
#endif
}

// One block per (b, h), between the two passes of a sequence split: the start state of every segment, in
// place in plan.starts. Entry 0 = the initial state; entry s + 1 = D_s * entry s + segment s's own state
// (written there by pass 1), D_s = exp of the sum of log g over segment s (fp64, as the chunk gate terms).
constexpr int kMaxSegments = 256;

template <typename T>
__global__ void __launch_bounds__(256) combineSegmentStarts(ChunkParams p, SegmentPlan plan, int segments)
{
    __shared__ float decay[kMaxSegments];
    int const bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int s = warp; s + 1 < segments; s += blockDim.x / 32)
    {
        double sum = 0.0;
        if (p.g != nullptr)
        {
            T const* const g = static_cast<T const*>(p.g) + size_t(b) * p.T * p.H + h;
            int const t1 = min(p.T, (s + 1) * plan.chunks * kCw);
            for (int t = s * plan.chunks * kCw + lane; t < t1; t += 32)
            {
                sum += double(logGate(toFloat(g[size_t(t) * p.H])));
            }
            sum = __shfl_sync(0xffffffffu, warpInclusiveSum(sum), 31);
        }
        if (lane == 0)
        {
            decay[s] = float(exp(sum));
        }
    }
    __syncthreads();
    size_t const per = size_t(kFw) * (kDvw + 1), segStride = size_t(p.B) * p.H * per;
    float* const starts = plan.starts + size_t(bh) * per;
    StateIn const initial = p.stateIn + size_t(bh) * per;
    for (size_t e = threadIdx.x; e < per; e += blockDim.x)
    {
        float x = initial ? initial[e] : 0.f;
        starts[e] = x;
        for (int s = 0; s + 1 < segments; ++s)
        {
            float* const next = starts + (s + 1) * segStride + e;
            x = fmaf(decay[s], x, *next);
            *next = x;
        }
    }
}

int multiprocessors()
{
    int device = 0, count = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
            cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess
        ? count
        : 0;
}

// Segments of the sequence split: enough blocks to fill the device, each segment at least
// kMinSegmentChunks chunks (shorter ones would spend more on the extra pass than they save); 1 = no split.
// With S segments the two passes take about 2 / S of the unsplit time, so a split needs S >= 3.
// slots: how many (segment, b, h) may run, the smaller of the multiprocessors and the workspace's slabs.
constexpr int kMinSegmentChunks = 8;
constexpr int kMinSegments = 3;

int segmentCount(int B, int H, int chunks, int slots)
{
    int const bh = B * H;
    if (kMinSegments * bh > slots)
    {
        return 1;
    }
    int const wanted = min(min(slots / bh, chunks / kMinSegmentChunks), kMaxSegments);
    if (wanted < kMinSegments)
    {
        return 1;
    }
    int const per = (chunks + wanted - 1) / wanted;
    return (chunks + per - 1) / per;
}

constexpr size_t kSlabBytes = size_t(kFw) * (kDvw + 1) * sizeof(float);
// Slabs of the workspace the split asks for: a fixed number, so that its size does not depend on the device
// (a TensorRT engine may run on another device than the one that sized its workspace). Compute capability
// 9.0 parts, the only ones that run this kernel, have at most 132 multiprocessors.
constexpr int kWorkspaceSlabs = 144;

template <typename T>
cudaError_t launchWgmmaTyped(ChunkParams const& p, cudaStream_t stream)
{
    bool const bf16 = std::is_same<T, __nv_bfloat16>::value;
    CUtensorMap mapQ, mapK, mapV, mapOut;
    if (!encodeTileMap(&mapQ, p.q, bf16, p.B, p.T, p.H * kFw) || !encodeTileMap(&mapK, p.k, bf16, p.B, p.T, p.H * kFw) ||
        !encodeTileMap(&mapV, p.v, bf16, p.B, p.T, p.H * kDvw) || !encodeTileMap(&mapOut, p.out, bf16, p.B, p.T, p.H * kDvw))
    {
        return cudaErrorInvalidValue;
    }
    auto kernel = scanChunkWgmmaKernel<T, false>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemW));
    if (e != cudaSuccess)
    {
        return e;
    }
    int const chunks = (p.T + kCw - 1) / kCw;
    int segments = 1;
    if (p.workspace != nullptr && aligned16(p.workspace))
    {
        size_t const slabs = p.workspaceBytes / kSlabBytes, sms = size_t(multiprocessors());
        segments = segmentCount(p.B, p.H, chunks, int(slabs < sms ? slabs : sms));
    }
    if (segments == 1)
    {
        kernel<<<dim3(p.H, p.B, 1), kThreadsW, kSmemW, stream>>>(p, SegmentPlan{chunks, 0, nullptr}, mapQ, mapK, mapV, mapOut);
        return cudaGetLastError();
    }
    auto stateOnlyKernel = scanChunkWgmmaKernel<T, true>;
    e = cudaFuncSetAttribute(stateOnlyKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemW));
    if (e != cudaSuccess)
    {
        return e;
    }
    SegmentPlan plan{(chunks + segments - 1) / segments, 1, static_cast<float*>(p.workspace)};
    stateOnlyKernel<<<dim3(p.H, p.B, segments - 1), kThreadsW, kSmemW, stream>>>(p, plan, mapQ, mapK, mapV, mapOut);
    combineSegmentStarts<T><<<p.B * p.H, 256, 0, stream>>>(p, plan, segments);
    plan.pass = 2;
    kernel<<<dim3(p.H, p.B, segments), kThreadsW, kSmemW, stream>>>(p, plan, mapQ, mapK, mapV, mapOut);
    return cudaGetLastError();
}

} // namespace

bool chunkWgmmaSupports(int F, int Dv, int dtype)
{
#if defined(RFA_HAVE_WGMMA)
    if (dtype == 0 || F != kFw || Dv != kDvw)
    {
        return false;
    }
    // sm_90a code runs on compute capability 9.0 only; the tensor maps need the driver's encoder
    int device = 0, major = 0, minor = 0;
    return tensorMapEncoder() != nullptr && cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 && minor == 0;
#else
    (void) F, (void) Dv, (void) dtype;
    return false;
#endif
}

size_t chunkWgmmaWorkspaceBound(int dtype)
{
#if defined(RFA_HAVE_WGMMA)
    constexpr bool built = true;
#else
    constexpr bool built = false; // no sm_90a code: the Hopper prefill never runs
#endif
    return built && (dtype == 1 || dtype == 2) ? kWorkspaceSlabs * kSlabBytes : 0;
}

size_t chunkWgmmaWorkspaceBytes(int F, int Dv, int dtype)
{
    return chunkWgmmaSupports(F, Dv, dtype) ? chunkWgmmaWorkspaceBound(dtype) : 0;
}

cudaError_t launchChunkWgmma(ChunkParams const& p, int dtype, cudaStream_t stream)
{
    return dtype == 1 ? launchWgmmaTyped<__half>(p, stream) : launchWgmmaTyped<__nv_bfloat16>(p, stream);
}

} // namespace rfa
