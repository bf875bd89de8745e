// Chunked prefill of rfa::CausalGatedScan on Hopper warpgroup MMA (wgmma, sm_90a) for F = 128, Dv = 64 and
// fp16/bf16, the model's head shape; other sizes take causal_gated_scan_chunk_mma.cu. The math is that
// kernel's, chunks of C = 64 steps:
//   A          = (Q K^T) ⊙ D,  D[t, i] = exp(b_t - b_i) (1 - g_i) for i <= t       b: prefix sums of log g
//   [num, den] = diag(exp(b)) Q [S, z] + A [V, 1]
//   [S, z]     = exp(b_C) [S, z] + K^T diag(w) [V, 1],   w_i = exp(b_C - b_i) (1 - g_i)
// One block of two warpgroups per (b, h). Per chunk, between two barriers: warpgroup 0 computes the scores,
// masks and decays them in registers and multiplies them (as the A operand, from registers) into [V, 1];
// warpgroup 1 scales V by w and computes Q [S, z] from the T copy of the state. Then each warpgroup updates
// 64 rows of the fp32 state, which lives in its accumulators for the whole sequence (K^T is read M-major from
// the tile that fed the scores), while warpgroup 1 reads out the chunk. Q, K, V stream in by cp.async into
// 128-byte-swizzled tiles of a three-stage ring (issued while the scores are computed); warp 0 prepares the
// next chunk's gate terms while the state update runs.
#include "chunk_common.cuh"
#include "scan_launch.h"
#include "wgmma.cuh"

namespace rfa
{

namespace
{

constexpr int kCw = kGateChunk, kFw = 128, kDvw = 64, kStagesW = 3, kThreadsW = 256;
constexpr uint32_t kTile = 64 * 128;               // one [64][64] swizzled tile, bytes
constexpr uint32_t kStageBytes = 5 * kTile;        // Q and K (two column blocks each), V
constexpr uint32_t kOffS = kStagesW * kStageBytes; // T copy of S: [128 f][64] swizzled
constexpr uint32_t kOffVw = kOffS + 2 * kTile;     // V diag(w)
constexpr uint32_t kOffZ = kOffVw + kTile;         // T copy of z: [128 f][8], column 0
constexpr uint32_t kOffW = kOffZ + kFw * 16;       // w: [64][8], column 0
constexpr uint32_t kOffOnes = kOffW + kCw * 16;    // ones: [64][8], column 0
constexpr int kLdNum = kDvw + 8;
constexpr uint32_t kOffNum = kOffOnes + kCw * 16; // A V partial, fp32 [64][kLdNum]
constexpr uint32_t kOffDen = kOffNum + kCw * kLdNum * 4;
constexpr int kLdOut = kDvw + 8;
constexpr uint32_t kOffOut = kOffDen + kCw * 4; // output tile, T [64][kLdOut]
constexpr int kGateStrideW = kGateTermsStride;
constexpr uint32_t kOffGates = kOffOut + kCw * kLdOut * 2;
constexpr uint32_t kSmemW = kOffGates + 2 * kGateStrideW * 4 + 1024; // + slack to align the base to 1 KB
static_assert(kSmemW <= 227 * 1024, "shared memory");

template <typename T>
__global__ void __launch_bounds__(kThreadsW, 1) scanChunkWgmmaKernel(ChunkParams p)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smemRaw[];
    unsigned char* const smem = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);
    unsigned char* const sCopy = smem + kOffS;
    unsigned char* const vw = smem + kOffVw;
    T* const zTile = reinterpret_cast<T*>(smem + kOffZ);
    T* const wTile = reinterpret_cast<T*>(smem + kOffW);
    T* const onesTile = reinterpret_cast<T*>(smem + kOffOnes);
    float* const numBuf = reinterpret_cast<float*>(smem + kOffNum);
    float* const denBuf = reinterpret_cast<float*>(smem + kOffDen);
    T* const Osm = reinterpret_cast<T*>(smem + kOffOut);
    float* const gateBuf = reinterpret_cast<float*>(smem + kOffGates);

    int const tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    int const gid = lane >> 2, tig = lane & 3, wg = warp >> 2, wq = warp & 3;
    int const r0 = 16 * wq + gid, r1 = r0 + 8; // accumulator rows of this thread
    int const h = blockIdx.x, b = blockIdx.y;
    int const T_ = p.T;
    bool const gated = p.g != nullptr;
    size_t const qkStride = size_t(p.H) * kFw, vStride = size_t(p.H) * kDvw;
    T const* const q = static_cast<T const*>(p.q) + size_t(b) * T_ * qkStride + size_t(h) * kFw;
    T const* const k = static_cast<T const*>(p.k) + size_t(b) * T_ * qkStride + size_t(h) * kFw;
    T const* const v = static_cast<T const*>(p.v) + size_t(b) * T_ * vStride + size_t(h) * kDvw;
    T const* const g = gated ? static_cast<T const*>(p.g) + size_t(b) * T_ * p.H + h : nullptr;
    T* const out = static_cast<T*>(p.out) + size_t(b) * T_ * vStride + size_t(h) * kDvw;
    int const chunks = (T_ + kCw - 1) / kCw;

    // By warpgroup 0 (tid < 128), while its scores are computed. Q/K: 16 chunks of 16 bytes a row; V: 8.
    auto issueLoad = [&](int n) {
        if (n < chunks)
        {
            unsigned char* const st = smem + (n % kStagesW) * kStageBytes;
            int const t0 = n * kCw;
            int const qj = tid & 15, vj = tid & 7;
#pragma unroll
            for (int i = 0; i < 8; ++i)
            {
                int const r = (tid >> 4) + 8 * i;
                bool const ok = t0 + r < T_;
                size_t const off = ok ? size_t(t0 + r) * qkStride + qj * 8 : 0;
                uint32_t const dst = (qj >> 3) * kTile + swizzled(r, (qj & 7) * 8);
                cpAsync16(st + dst, q + off, ok);
                cpAsync16(st + 2 * kTile + dst, k + off, ok);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                int const r = (tid >> 3) + 16 * i;
                bool const ok = t0 + r < T_;
                cpAsync16(st + 4 * kTile + swizzled(r, vj * 8), v + (ok ? size_t(t0 + r) * vStride + vj * 8 : 0), ok);
            }
        }
        cpAsyncCommit();
    };

    // By warpgroup 1 (tid >= 128), while its Q [S, z] is computed.
    auto storeOut = [&](int n) {
        int const t0 = n * kCw, t1 = tid - 128;
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            int const r = (t1 >> 3) + 16 * i, c = (t1 & 7) * 8;
            if (t0 + r < T_)
            {
                *reinterpret_cast<uint4*>(out + size_t(t0 + r) * vStride + c) = *reinterpret_cast<uint4 const*>(Osm + r * kLdOut + c);
            }
        }
    };

    // Warp 0 keeps the raw gates of the chunk after next in registers and turns them into the gate terms
    // one chunk ahead.
    auto loadGates = [&](int n, T (&gv)[2]) { loadChunkGates(g, size_t(p.H), n, T_, gv); };
    auto computeGates = [&](int n, T const (&gv)[2]) { chunkGateTerms(gateBuf + (n & 1) * kGateStrideW, n, T_, gated, gv); };

    if (wg == 0)
    {
        for (int n = 0; n < kStagesW - 1; ++n)
        {
            issueLoad(n);
        }
    }
    T gReg[2];
    if (warp == 0)
    {
        primeChunkGates(g, size_t(p.H), T_, gated, gateBuf, gReg);
    }
    // 8-column tiles: zeros but for column 0 (ones for the normaliser of A [V, 1])
    for (int i = tid; i < (kFw + 2 * kCw) * 8; i += kThreadsW)
    {
        T* const tile = i < kFw * 8 ? zTile + i : (i < (kFw + kCw) * 8 ? wTile + (i - kFw * 8) : onesTile + (i - (kFw + kCw) * 8));
        *tile = fromFloat<T>(i >= (kFw + kCw) * 8 && (i & 7) == 0 ? 1.f : 0.f);
    }
    __syncthreads(); // the zeros land before the z copy's column 0

    // The state: warpgroup wg owns rows f = 64 wg + r0 / r1, in the m64n64 accumulator layout
    // (sAcc[4j + e]: row r0 (e < 2) or r1, column 8j + 2 tig + e % 2), z in column 0 of an m64n8 one.
    int const f0 = 64 * wg + r0, f1 = 64 * wg + r1;
    int const cols = kDvw + 1;
    size_t const stateBase = (size_t(b) * p.H + h) * kFw * cols;
    float sAcc[32];
    float zAcc[4] = {0.f, 0.f, 0.f, 0.f};
    {
        float const* const s0 = p.stateIn + stateBase;
#pragma unroll
        for (int j = 0; j < 8; ++j)
        {
            int const c = 8 * j + 2 * tig;
            sAcc[4 * j + 0] = p.stateIn ? s0[size_t(f0) * cols + c] : 0.f;
            sAcc[4 * j + 1] = p.stateIn ? s0[size_t(f0) * cols + c + 1] : 0.f;
            sAcc[4 * j + 2] = p.stateIn ? s0[size_t(f1) * cols + c] : 0.f;
            sAcc[4 * j + 3] = p.stateIn ? s0[size_t(f1) * cols + c + 1] : 0.f;
        }
        if (tig == 0 && p.stateIn)
        {
            zAcc[0] = s0[size_t(f0) * cols + kDvw];
            zAcc[2] = s0[size_t(f1) * cols + kDvw];
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
            zTile[f0 * 8] = fromFloat<T>(zAcc[0]);
            zTile[f1 * 8] = fromFloat<T>(zAcc[2]);
        }
        fenceProxyAsync(); // read by wgmma (async proxy) after the next barrier
    };
    storeStateCopy();

    for (int n = 0; n < chunks; ++n)
    {
        cpAsyncWait<kStagesW - 2>(); // this thread's copies of chunk n have landed
        fenceProxyAsync();
        __syncthreads(); // ... and everyone's; chunk n - 1 is completely done
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
            return matrixDesc(base + (kk >> 2) * kTile + (kk & 3) * 32, 16, 1024, true);
        };
        auto descMn = [&](unsigned char const* base, int kk) { // MN-major, 16 K-rows a step
            return matrixDesc(base + kk * 2048, 8192, 1024, true);
        };
        auto descCol = [&](T const* base, int kk) { // 8-column tiles, 16 K-rows a step
            return matrixDesc(base + kk * 16 * 8, 128, 256, false);
        };

        float nx[32], dx[4];
        if (wg == 0)
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
            // while the scores are computed: the loads of chunk n + 2 (into the stage chunk n - 1 used) and
            // the decay factors
            issueLoad(n + kStagesW - 1);
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
            zeroRegisters(dx);
            wgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kCw / 16; ++kk)
            {
                wgmmaRS64<T, 1>(nx, af[kk], descMn(Vst, kk));
                wgmmaRS8<T, 1>(dx, af[kk], descCol(onesTile, kk));
            }
            wgmmaCommit();
            wgmmaWaitAll();
            pinRegisters(nx);
            pinRegisters(dx);
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                int const c = 8 * j + 2 * tig;
                *reinterpret_cast<float2*>(numBuf + r0 * kLdNum + c) = make_float2(nx[4 * j], nx[4 * j + 1]);
                *reinterpret_cast<float2*>(numBuf + r1 * kLdNum + c) = make_float2(nx[4 * j + 2], nx[4 * j + 3]);
            }
            if (tig == 0)
            {
                denBuf[r0] = dx[0];
                denBuf[r1] = dx[2];
            }
        }
        else
        {
            // diag(exp(b)) Q [S, z]; while it runs: the previous output tile, V diag(w) and w (rounded to T)
            // for the state update, the next chunk's gate terms
            zeroRegisters(nx);
            zeroRegisters(dx);
            wgmmaFence();
#pragma unroll
            for (int kk = 0; kk < kFw / 16; ++kk)
            {
                wgmmaSS64<T, 0, 1>(nx, descQK(Qst, kk), descMn(sCopy, kk));
                wgmmaSS8<T, 0, 1>(dx, descQK(Qst, kk), descCol(zTile, kk));
            }
            wgmmaCommit();
            if (n > 0)
            {
                storeOut(n - 1);
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
                wTile[t1 * 8] = fromFloat<T>(wgt[t1]);
            }
            fenceProxyAsync();
            wgmmaWaitAll();
            pinRegisters(nx);
            pinRegisters(dx);
            float const fA = fromStart[r0], fB = fromStart[r1];
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                nx[4 * j] *= fA;
                nx[4 * j + 1] *= fA;
                nx[4 * j + 2] *= fB;
                nx[4 * j + 3] *= fB;
            }
            dx[0] *= fA;
            dx[2] *= fB;
        }
        __syncthreads(); // V diag(w), w and the A V partial are complete; nobody reads the state copy any more

        // [S, z] = exp(b_C) [S, z] + K^T diag(w) [V, 1], rows 64 wg .. 64 wg + 63
        {
            float const lam = gb[4 * kCw];
#pragma unroll
            for (int i = 0; i < 32; ++i)
            {
                sAcc[i] *= lam;
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                zAcc[i] *= lam;
            }
            pinRegisters(sAcc);
            pinRegisters(zAcc);
            wgmmaFence();
            unsigned char const* const kT = Kst + wg * kTile; // features 64 wg .., keys along the rows
#pragma unroll
            for (int kk = 0; kk < kCw / 16; ++kk)
            {
                wgmmaSS64<T, 1, 1>(sAcc, descMn(kT, kk), descMn(vw, kk));
                wgmmaSS8<T, 1, 1>(zAcc, descMn(kT, kk), descCol(wTile, kk));
            }
            wgmmaCommit();
        }
        // while the update runs: warp 0 prepares the next chunk's gate terms (in the other buffer, whose last
        // readers finished before this chunk's first barrier)
        if (warp == 0 && n + 1 < chunks)
        {
            computeGates(n + 1, gReg);
            loadGates(n + 2, gReg);
        }
        if (wg == 1)
        {
            // readout while the update runs: num = its Q S part + A V (warpgroup 0), the same for den
            float const den0 = __shfl_sync(0xffffffffu, dx[0], lane & ~3) + denBuf[r0];
            float const den1 = __shfl_sync(0xffffffffu, dx[2], lane & ~3) + denBuf[r1];
            float m0 = 0.f, m1 = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                int const c = 8 * j + 2 * tig;
                float2 const a = *reinterpret_cast<float2 const*>(numBuf + r0 * kLdNum + c);
                float2 const bq = *reinterpret_cast<float2 const*>(numBuf + r1 * kLdNum + c);
                nx[4 * j] += a.x;
                nx[4 * j + 1] += a.y;
                nx[4 * j + 2] += bq.x;
                nx[4 * j + 3] += bq.y;
                m0 = fmaxf(m0, fmaxf(fabsf(nx[4 * j]), fabsf(nx[4 * j + 1])));
                m1 = fmaxf(m1, fmaxf(fabsf(nx[4 * j + 2]), fabsf(nx[4 * j + 3])));
            }
            float const sc0 = readoutScale(den0, quadMax(m0), p.eps);
            float const sc1 = readoutScale(den1, quadMax(m1), p.eps);
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                int const c = 8 * j + 2 * tig;
                *reinterpret_cast<uint32_t*>(Osm + r0 * kLdOut + c) = pack2<T>(nx[4 * j] * sc0, nx[4 * j + 1] * sc0);
                *reinterpret_cast<uint32_t*>(Osm + r1 * kLdOut + c) = pack2<T>(nx[4 * j + 2] * sc1, nx[4 * j + 3] * sc1);
            }
        }
        wgmmaWaitAll();
        pinRegisters(sAcc);
        pinRegisters(zAcc);
        storeStateCopy();
    }
    cpAsyncWait<0>();
    __syncthreads();
    if (wg == 1)
    {
        storeOut(chunks - 1);
    }
    {
        float* const s1 = p.stateOut + stateBase;
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
            s1[size_t(f0) * cols + kDvw] = zAcc[0];
            s1[size_t(f1) * cols + kDvw] = zAcc[2];
        }
    }
#endif
}

template <typename T>
cudaError_t launchWgmmaTyped(ChunkParams const& p, cudaStream_t stream)
{
    auto kernel = scanChunkWgmmaKernel<T>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemW));
    if (e != cudaSuccess)
    {
        return e;
    }
    kernel<<<dim3(p.H, p.B), kThreadsW, kSmemW, stream>>>(p);
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
    // sm_90a code runs on compute capability 9.0 only
    int device = 0, major = 0, minor = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 && minor == 0;
#else
    (void) F, (void) Dv, (void) dtype;
    return false;
#endif
}

cudaError_t launchChunkWgmma(ChunkParams const& p, int dtype, cudaStream_t stream)
{
    return dtype == 1 ? launchWgmmaTyped<__half>(p, stream) : launchWgmmaTyped<__nv_bfloat16>(p, stream);
}

} // namespace rfa
