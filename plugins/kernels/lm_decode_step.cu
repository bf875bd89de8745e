// The batch-1 decode step of a whole RFA language model in one persistent kernel (lm_decode_step.h).
//
// One block of 16 consumer warps and a producer warp per multiprocessor (at most d_model and d_ffn blocks).
// Each block owns a slice of rows of every weight matrix, and block h the state of head h; the producer
// streams them into a ring of shared-memory slots by bulk copies, in the order they are used, refilling a slot as soon as it is
// released: weights do not depend on the data, so the copies run ahead across stages and layers. The
// LayerNorm parameters and head h's W~ travel through the same ring, and each stage's bias rows are read
// while the block waits for the stage's inputs, so no global load is left on the critical path. Per
// layer five stages: (A) LayerNorm + the q/k/v/gate rows, (B) head h's features, scan step and bounded
// readout, (C) output projection + residual, (D) LayerNorm + FFN1 + GELU, (E) FFN2 + residual; then
// LayerNorm + LM head + argmax (the last block to finish reduces the blocks' maxima). Values crossing
// blocks carry the flag of the step and stage that wrote them, so blocks wait for data, not at barriers.
#include "lm_decode_step.h"

#include "random_features.h"
#include "timeline.cuh"
#include "tma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace rfa
{
namespace lmstep
{

constexpr int kConsumerWarps = 16;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32; // and one producer warp, whose lane 0 issues the ring's copies
constexpr int kSlotBytes = 32768;
constexpr int kMaxSlots = 8; // the ring: as many 32 KB slots as shared memory leaves room for, 3 to 8
constexpr int kMaxModel = 4096;
constexpr int kMaxFfn = 8192;
constexpr int kMaxPart = 64; // rows x segments of one tile: K = 256 gives 64 rows of one segment

// A row of K elements is cut into S segments of CH 16-byte chunks per lane (K = 256 S CH): each warp keeps
// its segment of the input vector in registers.
struct Split
{
    int S, CH;
};

__host__ __device__ inline Split splitOf(int K)
{
    for (int S = 1; S <= kConsumerWarps; ++S)
    {
        if (K % (256 * S) == 0 && K / (256 * S) <= 4)
        {
            return {S, K / (256 * S)};
        }
    }
    return {0, 0};
}

struct Geometry
{
    int G, L, d, H, dh, D, F, f, V, qkvN, SR, slots; // SR: state rows per ring tile
    int gated, gaussian, sinusoidal;
    float lnEps, eps, embedScale;
    // shared memory (bytes from the dynamic base) and workspace (8-byte words) offsets
    int smXin, smXres, smPart, smRed, smPhi, smHead, smBias, smBars, smBytes;
    int wsX, wsY, wsA, wsU, wsBest, wsWords;
};

__host__ __device__ inline int roundUp(int x, int m)
{
    return (x + m - 1) / m * m;
}

// G: the multiprocessors; sharedLimit: a block's shared memory (opt-in bytes). The grid is at most one block each, and no more blocks than d_model or d_ffn rows:
// every block then owns rows of every GEMV stage and so waits for all blocks of the stage before it, which
// keeps any block within one stage of every other and lets each value crossing blocks use one buffer.
inline bool makeGeometry(rfa_lm_step_args_t const& a, int G, int sharedLimit, Geometry& g)
{
    G = G < a.d_model ? G : a.d_model;
    G = G < a.d_ffn ? G : a.d_ffn;
    g.G = G;
    g.L = a.n_layers;
    g.d = a.d_model;
    g.H = a.n_heads;
    if (g.H < 1 || g.d % g.H != 0)
    {
        return false;
    }
    g.dh = g.d / g.H;
    g.D = a.num_features;
    g.gaussian = a.kind == RFA_FEATURES_GAUSSIAN;
    g.F = g.gaussian ? 2 * g.D : g.D;
    g.f = a.d_ffn;
    g.V = a.vocab_size;
    g.gated = a.gated ? 1 : 0;
    g.sinusoidal = a.sinusoidal ? 1 : 0;
    g.qkvN = 3 * g.d + (g.gated ? g.H : 0);
    g.lnEps = a.layer_norm_eps;
    g.eps = a.eps;
    g.embedScale = a.embed_scale;
    if (g.L < 1 || g.L > RFA_LM_STEP_MAX_LAYERS || g.V < 1 || (g.dh != 32 && g.dh != 64 && g.dh != 128) || g.D < 1 || g.D > 128 || g.d > kMaxModel
        || g.f > kMaxFfn || splitOf(g.d).S == 0 || splitOf(g.f).S == 0)
    {
        return false;
    }
    if (g.H > G)
    {
        return false;
    }
    if (g.D * g.dh * 2 > kSlotBytes || 4 * g.d > kSlotBytes) // W~ of a head; a LayerNorm's weight and bias
    {
        return false;
    }
    g.SR = (kSlotBytes / ((g.dh + 1) * 4)) / 4 * 4; // whole rows, a multiple of 16 bytes
    g.SR = g.SR < g.F ? g.SR : g.F;
    if ((g.SR * (g.dh + 1) * 4) % 16 != 0)
    {
        return false;
    }
    int const widest = g.f > g.d ? g.f : g.d;
    int const xin = roundUp(widest > kConsumerWarps * (g.dh + 1) ? widest : kConsumerWarps * (g.dh + 1), 32) * 4;
    g.smXin = 0; // the slots come last, once the rest is counted
    g.smXres = g.smXin + xin;
    g.smPart = g.smXres + roundUp(g.d, 32) * 4;
    g.smRed = g.smPart + kMaxPart * 4;
    g.smPhi = g.smRed + 2 * kConsumerWarps * 4;
    g.smHead = g.smPhi + roundUp(2 * g.F, 32) * 4;
    g.smBias = g.smHead + roundUp(5 * g.dh + 8, 32) * 4;
    int widestN = g.qkvN > g.f ? g.qkvN : g.f;
    widestN = widestN > g.V ? widestN : g.V;
    g.smBars = g.smBias + roundUp((widestN + G - 1) / G + 1, 32) * 4; // one block's bias rows of a stage
    int const rest = g.smBars + 2 * kMaxSlots * 8; // full and empty barriers
    g.slots = (sharedLimit - roundUp(rest, 128)) / kSlotBytes;
    g.slots = g.slots < kMaxSlots ? g.slots : kMaxSlots;
    if (g.slots < 3)
    {
        return false;
    }
    int const shift = g.slots * kSlotBytes;
    g.smXin += shift, g.smXres += shift, g.smPart += shift, g.smRed += shift, g.smPhi += shift;
    g.smHead += shift, g.smBias += shift, g.smBars += shift;
    g.smBytes = shift + rest;
    g.wsX = 32; // the first 256 bytes: counters (ticket, generation)
    g.wsY = g.wsX + roundUp(g.d, 32);
    g.wsA = g.wsY + roundUp(g.qkvN, 32);
    g.wsU = g.wsA + roundUp(g.d, 32);
    g.wsBest = g.wsU + roundUp(g.f, 32);
    g.wsWords = g.wsBest + roundUp(G, 32);
    return true;
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900

__device__ __forceinline__ void consumerSync()
{
    asm volatile("bar.sync 1, %0;\n" ::"r"(kConsumers) : "memory");
}

__device__ __forceinline__ void bulkLoad(void* dst, void const* src, uint32_t bytes, uint64_t* bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     smemAddr(dst)),
                 "l"(src), "r"(bytes), "r"(smemAddr(bar))
                 : "memory");
}

// Values that cross blocks travel with the flag of the stage that wrote them, in one 8-byte word (written
// and read whole), so a reader waits for exactly the words it needs and no grid barrier is needed. A
// block can run at most one stage ahead of any other (every stage reads what all blocks of the stage
// before wrote), so one buffer per value suffices.
__device__ __forceinline__ void storeFlagged(uint64_t* p, float v, unsigned flag)
{
    uint64_t const w = (static_cast<uint64_t>(flag) << 32) | __float_as_uint(v);
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;\n" ::"l"(p), "l"(w) : "memory");
}

__device__ __forceinline__ uint64_t loadWord(uint64_t const* p)
{
    uint64_t w;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];\n" : "=l"(w) : "l"(p) : "memory");
    return w;
}

__device__ __forceinline__ float waitFlagged(uint64_t const* p, uint64_t w, unsigned flag)
{
    while (static_cast<unsigned>(w >> 32) != flag)
    {
        w = loadWord(p);
    }
    return __uint_as_float(static_cast<unsigned>(w));
}

template <typename T>
__device__ __forceinline__ float load(void const* p, int64_t i)
{
    return toFloat<T>(static_cast<T const*>(p)[i]);
}

__device__ __forceinline__ int rowBegin(int N, int b, int G)
{
    return static_cast<int>(static_cast<int64_t>(N) * b / G);
}

// Block b's bias rows of a stage ([r0, r1) of a vector of N; src may be null), read into registers before the
// block waits for the stage's inputs and stored to shared memory (dst[row - r0]) after, so their latency hides
// behind the wait.
template <typename T>
struct BiasRows
{
    static constexpr int kAtOnce = 1; // rows past kAtOnce x 512 are read after the wait (more registers spilled)
    void const* src;
    int r0, r1;
    float* dst;
    T held[kAtOnce];

    __device__ BiasRows(void const* bias, int N, int b, int G, float* smem)
        : src(bias), r0(rowBegin(N, b, G)), r1(rowBegin(N, b + 1, G)), dst(smem)
    {
    }

    __device__ void issue(int tid)
    {
#pragma unroll
        for (int m = 0; m < kAtOnce; ++m)
        {
            int const i = tid + m * kConsumers;
            if (src != nullptr && i < r1 - r0)
            {
                held[m] = static_cast<T const*>(src)[r0 + i];
            }
        }
    }

    // before a consumerSync
    __device__ void finish(int tid)
    {
        if (src == nullptr)
        {
            return;
        }
#pragma unroll
        for (int m = 0; m < kAtOnce; ++m)
        {
            int const i = tid + m * kConsumers;
            if (i < r1 - r0)
            {
                dst[i] = toFloat<T>(held[m]);
            }
        }
        for (int i = tid + kAtOnce * kConsumers; i < r1 - r0; i += kConsumers)
        {
            dst[i] = load<T>(src, r0 + i);
        }
    }
};

constexpr int kWordsAtOnce = 8;

// dst[0, n) = the values of src written with `flag`; the loads of up to 8 words a thread are issued before
// the first wait, and the next stage's bias rows before them
template <typename T>
__device__ void loadFlagged(float* dst, uint64_t const* src, int n, unsigned flag, int tid, BiasRows<T>& bias)
{
    bias.issue(tid);
    for (int base = 0; base < n; base += kWordsAtOnce * kConsumers)
    {
        uint64_t w[kWordsAtOnce];
#pragma unroll
        for (int m = 0; m < kWordsAtOnce; ++m)
        {
            int const i = base + tid + m * kConsumers;
            if (i < n)
            {
                w[m] = loadWord(src + i);
            }
        }
#pragma unroll
        for (int m = 0; m < kWordsAtOnce; ++m)
        {
            int const i = base + tid + m * kConsumers;
            if (i < n)
            {
                dst[i] = waitFlagged(src + i, w[m], flag);
            }
        }
    }
    bias.finish(tid);
    consumerSync();
}

// eight 16-bit weights (one 16-byte chunk) . eight fp32 inputs
template <typename T>
__device__ __forceinline__ float dot8(uint4 w, float const (&x)[8])
{
    T const* e = reinterpret_cast<T const*>(&w);
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i)
    {
        acc = fmaf(toFloat<T>(e[i]), x[i], acc);
    }
    return acc;
}

// torch.argmax's order: NaN above everything, then the larger value, then the smaller index
__device__ __forceinline__ bool better(float a, int ia, float b, int ib)
{
    bool const na = a != a, nb = b != b;
    if (na != nb)
    {
        return na;
    }
    if (!na && a != b)
    {
        return a > b;
    }
    return ia < ib;
}

__device__ __forceinline__ int tilesOfRows(int N, int K, int b, int G)
{
    int const perTile = kSlotBytes / (2 * K);
    return (rowBegin(N, b + 1, G) - rowBegin(N, b, G) + perTile - 1) / perTile;
}

// One tile: up to two bulk copies, the second placed right after the first.
struct Tile
{
    void const* src[2];
    uint32_t bytes[2];
};

// The order in which block b reads its tiles: per layer the attention LayerNorm's weight and bias, its rows
// of the q/k/v/gate weight, head b's W~ and state (blocks b < H), its rows of the output projection, the
// FFN LayerNorm's weight and bias, its rows of FFN1 and FFN2; then the final LayerNorm and its rows of the
// LM head.
struct Schedule
{
    int tA, tW, tB, tC, tD, tE, perLayer, total;

    __device__ void init(Geometry const& g, int b)
    {
        tA = tilesOfRows(g.qkvN, g.d, b, g.G);
        tW = b < g.H ? 1 : 0;
        tB = b < g.H ? (g.F + g.SR - 1) / g.SR : 0;
        tC = tilesOfRows(g.d, g.d, b, g.G);
        tD = tilesOfRows(g.f, g.d, b, g.G);
        tE = tilesOfRows(g.d, g.f, b, g.G);
        perLayer = 1 + tA + tW + tB + tC + 1 + tD + tE;
        total = g.L * perLayer + 1 + tilesOfRows(g.V, g.d, b, g.G);
    }

    template <typename T>
    __device__ static Tile rows(void const* w, int N, int K, int b, int G, int j)
    {
        int const perTile = kSlotBytes / (2 * K);
        int const row = rowBegin(N, b, G) + j * perTile;
        int const n = min(perTile, rowBegin(N, b + 1, G) - row);
        return {{static_cast<T const*>(w) + static_cast<int64_t>(row) * K, nullptr}, {static_cast<uint32_t>(n * K * 2), 0u}};
    }

    __device__ static Tile layerNorm(Geometry const& g, void const* weight, void const* bias)
    {
        return {{weight, bias}, {static_cast<uint32_t>(2 * g.d), static_cast<uint32_t>(2 * g.d)}};
    }

    template <typename T>
    __device__ Tile tile(Geometry const& g, rfa_lm_step_args_t const& a, int b, int i) const
    {
        int const l = i / perLayer;
        if (l >= g.L)
        {
            int const j = i - g.L * perLayer;
            return j == 0 ? layerNorm(g, a.ln_f_weight, a.ln_f_bias) : rows<T>(a.lm_head_weight, g.V, g.d, b, g.G, j - 1);
        }
        rfa_lm_step_layer_t const& p = a.layers[l];
        int j = i - l * perLayer;
        if (j == 0)
        {
            return layerNorm(g, p.ln_attn_weight, p.ln_attn_bias);
        }
        j -= 1;
        if (j < tA)
        {
            return rows<T>(p.qkvg_weight, g.qkvN, g.d, b, g.G, j);
        }
        j -= tA;
        if (j < tW)
        {
            return {{static_cast<T const*>(p.w_tilde) + static_cast<int64_t>(b) * g.D * g.dh, nullptr},
                {static_cast<uint32_t>(g.D * g.dh * 2), 0u}};
        }
        j -= tW;
        if (j < tB)
        {
            int const r = j * g.SR, n = min(g.SR, g.F - r);
            return {{a.states[l] + (static_cast<int64_t>(b) * g.F + r) * (g.dh + 1), nullptr},
                {static_cast<uint32_t>(n * (g.dh + 1) * 4), 0u}};
        }
        j -= tB;
        if (j < tC)
        {
            return rows<T>(p.o_weight, g.d, g.d, b, g.G, j);
        }
        j -= tC;
        if (j == 0)
        {
            return layerNorm(g, p.ln_ffn_weight, p.ln_ffn_bias);
        }
        j -= 1;
        if (j < tD)
        {
            return rows<T>(p.ffn1_weight, g.f, g.d, b, g.G, j);
        }
        return rows<T>(p.ffn2_weight, g.d, g.f, b, g.G, j - tD);
    }
};

// the warp's best (value, index) in every lane
__device__ __forceinline__ void warpBest(float& bestVal, int& bestIdx)
{
#pragma unroll
    for (int o = 16; o > 0; o /= 2)
    {
        float const ov = __shfl_xor_sync(0xffffffffu, bestVal, o);
        int const oi = __shfl_xor_sync(0xffffffffu, bestIdx, o);
        if (better(ov, oi, bestVal, bestIdx))
        {
            bestVal = ov;
            bestIdx = oi;
        }
    }
}

__device__ __forceinline__ void mbarrierArrive(uint64_t* bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smemAddr(bar)) : "memory");
}

// The ring of shared-memory slots: tile t goes to slot t % slots. The producer warp issues the bulk copy of
// tile t + slots as soon as the consumers have released tile t's slot (its `empty` barrier); weights and the
// state do not depend on the step's data, so the copies run ahead across stages and layers, and issuing
// them costs the consumers nothing.
struct Ring
{
    char* slots;
    uint64_t* full;
    uint64_t* empty;
    int n; // slots
    int t;
    Schedule schedule;

    template <typename T>
    __device__ void issue(Geometry const& g, rfa_lm_step_args_t const& a, int b, int i)
    {
        Tile const tile = schedule.tile<T>(g, a, b, i);
        int const s = i % n;
        tmaExpectTx(&full[s], tile.bytes[0] + tile.bytes[1]);
        bulkLoad(slots + s * kSlotBytes, tile.src[0], tile.bytes[0], &full[s]);
        if (tile.bytes[1] != 0)
        {
            bulkLoad(slots + s * kSlotBytes + tile.bytes[0], tile.src[1], tile.bytes[1], &full[s]);
        }
    }

    // the producer's whole work: every tile of the step, in order, each into a released slot
    template <typename T>
    __device__ void produce(Geometry const& g, rfa_lm_step_args_t const& a, int b)
    {
        for (int i = 0; i < schedule.total; ++i)
        {
            if (i >= n)
            {
                mbarrierWait(&empty[i % n], (i / n - 1) & 1);
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the consumers' reads, before the copy
            }
            issue<T>(g, a, b, i);
        }
    }

    __device__ char const* waitFull()
    {
        int const s = t % n;
        mbarrierWait(&full[s], (t / n) & 1);
        return slots + s * kSlotBytes;
    }

    // by every consumer thread after its last read of tile t's slot (the empty barrier counts them all, so each
    // thread's reads are ordered before its own arrival: what compute-sanitizer's racecheck follows)
    __device__ void release()
    {
        mbarrierArrive(&empty[t % n]);
        ++t;
    }
};


__device__ float blockSum(float v, float* red, int tid)
{
    v = warpSum(v);
    if ((tid & 31) == 0)
    {
        red[tid / 32] = v;
    }
    consumerSync();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kConsumerWarps; ++i)
    {
        total += red[i];
    }
    consumerSync();
    return total;
}

// xin = LayerNorm(xres) (biased variance, as torch); its weight and bias are the ring's next tile
template <typename T>
__device__ void layerNorm(Geometry const& g, rfa_lm_step_args_t const& a, int b, float const* xres, float* xin,
    Ring& ring, float* red, int tid)
{
    float s = 0.f;
    for (int i = tid; i < g.d; i += kConsumers)
    {
        s += xres[i];
    }
    float const mean = blockSum(s, red, tid) / g.d;
    float v = 0.f;
    for (int i = tid; i < g.d; i += kConsumers)
    {
        float const c = xres[i] - mean;
        v += c * c;
    }
    float const rstd = rsqrtf(blockSum(v, red, tid) / g.d + g.lnEps);
    T const* w = reinterpret_cast<T const*>(ring.waitFull());
    T const* bias = w + g.d;
    for (int i = tid; i < g.d; i += kConsumers)
    {
        xin[i] = (xres[i] - mean) * rstd * toFloat<T>(w[i]) + toFloat<T>(bias[i]);
    }
    consumerSync();
    ring.release();
}

// rows [r0, r1) of the stage's weight (this block's share, streamed through the ring) . xin + bias[row - r0]
// (bias: shared memory, or null) -> epi(row, sum)
template <typename T, int CH, typename Epilogue>
__device__ void gemvRows(Geometry const& g, rfa_lm_step_args_t const& a, int b, float const* xin, int K, int S, int r0,
    int r1, Ring& ring, float* part, float const* bias, int tid, Epilogue const& epi)
{
    int const warp = tid / 32, lane = tid & 31;
    int const rowsAtOnce = kConsumerWarps / S;
    bool const active = warp < rowsAtOnce * S;
    int const seg = warp % S, segK = K / S;
    float x[CH][8];
#pragma unroll
    for (int c = 0; c < CH; ++c)
    {
        float4 const* src = reinterpret_cast<float4 const*>(xin + seg * segK + (c * 32 + lane) * 8);
        float4 const lo = src[0], hi = src[1];
        x[c][0] = lo.x, x[c][1] = lo.y, x[c][2] = lo.z, x[c][3] = lo.w;
        x[c][4] = hi.x, x[c][5] = hi.y, x[c][6] = hi.z, x[c][7] = hi.w;
    }
    int const perTile = kSlotBytes / (2 * K);
    for (int row0 = r0; row0 < r1; row0 += perTile)
    {
        int const n = min(perTile, r1 - row0);
        T const* tile = reinterpret_cast<T const*>(ring.waitFull());
        if (active)
        {
            for (int r = warp / S; r < n; r += rowsAtOnce)
            {
                uint4 const* w = reinterpret_cast<uint4 const*>(tile + r * K + seg * segK);
                float acc = 0.f;
#pragma unroll
                for (int c = 0; c < CH; ++c)
                {
                    acc += dot8<T>(w[c * 32 + lane], x[c]);
                }
                acc = warpSum(acc);
                if (lane == 0)
                {
                    part[r * S + seg] = acc;
                }
            }
        }
        consumerSync();
        ring.release();
        if (tid < n)
        {
            float v = 0.f;
            for (int s = 0; s < S; ++s)
            {
                v += part[tid * S + s];
            }
            epi(row0 + tid, bias != nullptr ? v + bias[row0 + tid - r0] : v);
        }
        consumerSync();
    }
}

// bias: the stage's BiasRows, already in shared memory
template <typename T, typename Epilogue>
__device__ void gemv(Geometry const& g, rfa_lm_step_args_t const& a, float const* xin, int N, int K, int b, int G,
    Ring& ring, float* part, BiasRows<T> const& bias, int tid, Epilogue const& epi)
{
    Split const sp = splitOf(K);
    int const r0 = rowBegin(N, b, G), r1 = rowBegin(N, b + 1, G);
    float const* bs = bias.src != nullptr ? bias.dst : nullptr;
    switch (sp.CH)
    {
    case 1: gemvRows<T, 1>(g, a, b, xin, K, sp.S, r0, r1, ring, part, bs, tid, epi); break;
    case 2: gemvRows<T, 2>(g, a, b, xin, K, sp.S, r0, r1, ring, part, bs, tid, epi); break;
    case 3: gemvRows<T, 3>(g, a, b, xin, K, sp.S, r0, r1, ring, part, bs, tid, epi); break;
    default: gemvRows<T, 4>(g, a, b, xin, K, sp.S, r0, r1, ring, part, bs, tid, epi); break;
    }
}

// Stage B for block h < H: the features of q and k (head h's W~ the ring's next tile), the gated update of
// head h's state (in place, its rows streamed through the ring after W~), and the readout
// out = num / max(den, eps max|num|) (docs/op_contract.md; 0 where that bound is not positive) into the
// workspace.
template <typename T>
__device__ void attentionHead(Geometry const& g, rfa_lm_step_args_t const& a, rfa_lm_step_layer_t const& p, float* state, uint64_t const* y,
    uint64_t* out, unsigned flagIn, unsigned flagOut, Ring& ring, float* head, float* phi, float* red, int h, int tid,
    bool writeState, unsigned long long* stamp)
{
    int const warp = tid / 32, lane = tid & 31, dh = g.dh, width = dh + 1;
    float* q = head;
    float* k = head + dh;
    float* v = head + 2 * dh;
    float* num = head + 3 * dh + 4;
    float* sig = head + 4 * dh + 8;
    if (tid < dh)
    {
        T const sigma = static_cast<T const*>(p.sigma)[h * dh + tid];
        uint64_t const wq = loadWord(y + h * dh + tid), wk = loadWord(y + g.d + h * dh + tid);
        uint64_t const wv = loadWord(y + 2 * g.d + h * dh + tid);
        sig[tid] = toFloat<T>(sigma);
        q[tid] = waitFlagged(y + h * dh + tid, wq, flagIn);
        k[tid] = waitFlagged(y + g.d + h * dh + tid, wk, flagIn);
        v[tid] = waitFlagged(y + 2 * g.d + h * dh + tid, wv, flagIn);
    }
    else if (tid == dh)
    {
        float gate = 1.f;
        if (g.gated)
        {
            uint64_t const* src = y + 3 * g.d + h;
            gate = 1.f / (1.f + expf(-waitFlagged(src, loadWord(src), flagIn)));
        }
        head[3 * dh] = gate;
    }
    consumerSync();
    if (stamp != nullptr && tid == 0)
    {
        *stamp = clock64();
    }
    if (warp < 2) // |q|^2 and |k|^2
    {
        float const* x = warp == 0 ? q : k;
        float s = 0.f;
        for (int i = lane; i < dh; i += 32)
        {
            s += x[i] * x[i];
        }
        s = warpSum(s);
        if (lane == 0)
        {
            head[3 * dh + 1 + warp] = 1.f / fmaxf(sqrtf(s), 1e-6f);
        }
    }
    consumerSync();
    float const invQ = head[3 * dh + 1], invK = head[3 * dh + 2];
    float const scale = g.gaussian ? rsqrtf(float(g.D)) : sqrtf(2.f / float(g.D));
    // one projection per row of W~ (both features of the gaussian map at once), a warp's eight rows side by
    // side so that their reductions overlap; lane j then maps row warp + 16 j
    T const* wTilde = reinterpret_cast<T const*>(ring.waitFull());
    constexpr int kRowsPerWarp = 128 / kConsumerWarps; // D <= 128
    float pq[kRowsPerWarp], pk[kRowsPerWarp];
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j)
    {
        int const row = warp + j * kConsumerWarps;
        pq[j] = 0.f;
        pk[j] = 0.f;
        if (row < g.D)
        {
            for (int i = lane; i < dh; i += 32)
            {
                float const w = toFloat<T>(wTilde[row * dh + i]) * sig[i];
                pq[j] = fmaf(w, q[i], pq[j]);
                pk[j] = fmaf(w, k[i], pk[j]);
            }
        }
    }
    float myQ = 0.f, myK = 0.f;
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j)
    {
        float const sq = warpSum(pq[j]) * invQ, sk = warpSum(pk[j]) * invK;
        myQ = lane == j ? sq : myQ;
        myK = lane == j ? sk : myK;
    }
    if (int const row = warp + lane * kConsumerWarps; lane < kRowsPerWarp && row < g.D)
    {
        if (g.gaussian)
        {
            float sq, cq, sk, ck;
            sincosf(myQ, &sq, &cq);
            sincosf(myK, &sk, &ck);
            phi[row] = sq * scale;
            phi[g.D + row] = cq * scale;
            phi[g.F + row] = sk * scale;
            phi[g.F + g.D + row] = ck * scale;
        }
        else
        {
            phi[row] = fmaxf(myQ, 0.f) * scale;
            phi[g.F + row] = fmaxf(myK, 0.f) * scale;
        }
    }
    consumerSync();
    ring.release();
    float const gate = head[3 * dh];
    float* S = state + static_cast<int64_t>(h) * g.F * width;
    constexpr int kMaxCols = 5; // dh + 1 <= 129 columns over 32 lanes
    float acc[kMaxCols] = {0.f, 0.f, 0.f, 0.f, 0.f};
    for (int r0 = 0; r0 < g.F; r0 += g.SR)
    {
        int const n = min(g.SR, g.F - r0);
        float const* tile = reinterpret_cast<float const*>(ring.waitFull());
        for (int r = warp; r < n; r += kConsumerWarps)
        {
            float const pq = phi[r0 + r], pk = phi[g.F + r0 + r];
#pragma unroll
            for (int m = 0; m < kMaxCols; ++m)
            {
                int const c = lane + 32 * m;
                if (c < width)
                {
                    float const kv = c < dh ? pk * v[c] : pk;
                    float const s = tile[r * width + c];
                    float const s1 = g.gated ? fmaf(gate, s, (1.f - gate) * kv) : s + kv;
                    if (writeState)
                    {
                        S[(r0 + r) * width + c] = s1;
                    }
                    acc[m] = fmaf(pq, s1, acc[m]);
                }
            }
        }
        consumerSync(); // every read of the slot is done
        ring.release();
    }
    // red: [kConsumerWarps][width], the warps' parts of [phi_q^T S | phi_q . z], summed in warp order
#pragma unroll
    for (int m = 0; m < kMaxCols; ++m)
    {
        int const c = lane + 32 * m;
        if (c < width)
        {
            red[warp * width + c] = acc[m];
        }
    }
    consumerSync();
    if (tid < width)
    {
        float s = 0.f;
        for (int w = 0; w < kConsumerWarps; ++w)
        {
            s += red[w * width + tid];
        }
        num[tid] = s;
    }
    consumerSync();
    if (warp == 0)
    {
        float maxAbs = 0.f;
        for (int c = lane; c < dh; c += 32)
        {
            maxAbs = fmaxf(maxAbs, fabsf(num[c]));
        }
        float const bound = fmaxf(num[dh], g.eps * warpMaxAbs(maxAbs));
        for (int c = lane; c < dh; c += 32)
        {
            storeFlagged(out + h * dh + c, bound > 0.f ? num[c] / bound : 0.f, flagOut);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lmDecodeStepKernel(__grid_constant__ Geometry const g, __grid_constant__ rfa_lm_step_args_t const a)
{
    extern __shared__ __align__(128) char smem[];
    int const tid = threadIdx.x, b = blockIdx.x;
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + g.smBars);
    Ring ring{smem, bars, bars + kMaxSlots, g.slots, 0, {}};
    ring.schedule.init(g, b);
    if (tid == 0)
    {
        for (int s = 0; s < g.slots; ++s)
        {
            mbarrierInit(&ring.full[s], 1);
            mbarrierInit(&ring.empty[s], kConsumers);
        }
        fenceMbarrierInit();
    }
    __syncthreads(); // the only barrier of all threads: consumers use named barrier 1 from here on
    if (tid >= kConsumers)
    {
        if (tid == kConsumers)
        {
            ring.produce<T>(g, a, b);
        }
        return;
    }

    uint64_t* ws = static_cast<uint64_t*>(a.workspace);
    unsigned* counters = static_cast<unsigned*>(a.workspace); // [0] ticket, [1] generation
    float* xin = reinterpret_cast<float*>(smem + g.smXin);
    float* xres = reinterpret_cast<float*>(smem + g.smXres);
    float* part = reinterpret_cast<float*>(smem + g.smPart);
    float* red = reinterpret_cast<float*>(smem + g.smRed);
    float* phi = reinterpret_cast<float*>(smem + g.smPhi);
    float* head = reinterpret_cast<float*>(smem + g.smHead);
    float* smBias = reinterpret_cast<float*>(smem + g.smBias);
    uint64_t* wsX = ws + g.wsX;
    uint64_t* wsY = ws + g.wsY;
    uint64_t* wsA = ws + g.wsA;
    uint64_t* wsU = ws + g.wsU;
    // the flag of what stage s (5 per layer) of this step writes: new in every step (the generation moves on)
    unsigned const generation = counters[1];
    auto flag = [&](int s) { return generation * static_cast<unsigned>(5 * g.L + 1) + static_cast<unsigned>(s) + 1u; };
    unsigned long long* const timeline = b == 0 ? a.timeline : nullptr;
    auto stamp = [&](int i) {
        if (timeline != nullptr && tid == 0)
        {
            timeline[i] = clock64();
        }
    };
    if (timeline != nullptr && tid == 0)
    {
        timeline[0] = globalTimer();
        timeline[2] = clock64();
    }

    // the embedding (+ position), computed by every block. A token outside the vocabulary leaves the state as
    // it was and gives NaN logits and next token -1.
    bool bad = false;
    {
        BiasRows<T> biasA(a.layers[0].qkvg_bias, g.qkvN, b, g.G, smBias);
        biasA.issue(tid);
        int64_t const token = a.token[0];
        bad = token < 0 || token >= g.V;
        float const position = static_cast<float>(a.position[0]);
        int const half = g.d / 2;
        float const step = -logf(10000.f) / static_cast<float>(half);
        for (int i = tid; i < g.d; i += kConsumers)
        {
            float x = bad ? 0.f : load<T>(a.embed, token * g.d + i) * g.embedScale;
            if (g.sinusoidal && i < 2 * half)
            {
                float const angle = position * expf(static_cast<float>(i / 2) * step);
                x += (i & 1) ? cosf(angle) : sinf(angle);
            }
            xres[i] = x;
        }
        biasA.finish(tid);
        consumerSync();
    }

    for (int l = 0; l < g.L; ++l)
    {
        rfa_lm_step_layer_t const& p = a.layers[l];
        int const s0 = 5 * l;
        // (A) q, k, v and gate logits
        BiasRows<T> biasA(p.qkvg_bias, g.qkvN, b, g.G, smBias); // layer 0's: read with the embedding above
        if (l > 0)
        {
            loadFlagged(xres, wsX, g.d, flag(s0 - 1), tid, biasA);
            stamp(4 + 2 * (s0 - 1));
        }
        layerNorm<T>(g, a, b, xres, xin, ring, red, tid);
        unsigned const fA = flag(s0);
        gemv<T>(g, a, xin, g.qkvN, g.d, b, g.G, ring, part, biasA, tid,
            [&](int row, float v) { storeFlagged(wsY + row, v, fA); });
        stamp(3 + 2 * s0);
        // (B) features, scan step and readout of head b
        if (b < g.H)
        {
            attentionHead<T>(g, a, p, a.states[l], wsY, wsA, fA, flag(s0 + 1), ring, head, phi, xin, b, tid, !bad,
                timeline == nullptr ? nullptr : timeline + 4 + 2 * s0);
        }
        stamp(3 + 2 * (s0 + 1));
        // (C) output projection, residual
        BiasRows<T> biasC(p.o_bias, g.d, b, g.G, smBias);
        loadFlagged(xin, wsA, g.d, flag(s0 + 1), tid, biasC);
        stamp(4 + 2 * (s0 + 1));
        unsigned const fC = flag(s0 + 2);
        gemv<T>(g, a, xin, g.d, g.d, b, g.G, ring, part, biasC, tid,
            [&](int row, float v) { storeFlagged(wsX + row, xres[row] + v, fC); });
        stamp(3 + 2 * (s0 + 2));
        // (D) LayerNorm, FFN1 and exact GELU
        BiasRows<T> biasD(p.ffn1_bias, g.f, b, g.G, smBias);
        loadFlagged(xres, wsX, g.d, fC, tid, biasD);
        stamp(4 + 2 * (s0 + 2));
        layerNorm<T>(g, a, b, xres, xin, ring, red, tid);
        unsigned const fD = flag(s0 + 3);
        gemv<T>(g, a, xin, g.f, g.d, b, g.G, ring, part, biasD, tid,
            [&](int row, float u) { storeFlagged(wsU + row, 0.5f * u * (1.f + erff(u * 0.70710678118654752f)), fD); });
        stamp(3 + 2 * (s0 + 3));
        // (E) FFN2 and residual
        BiasRows<T> biasE(p.ffn2_bias, g.d, b, g.G, smBias);
        loadFlagged(xin, wsU, g.f, fD, tid, biasE);
        stamp(4 + 2 * (s0 + 3));
        unsigned const fE = flag(s0 + 4);
        gemv<T>(g, a, xin, g.d, g.f, b, g.G, ring, part, biasE, tid,
            [&](int row, float v) { storeFlagged(wsX + row, xres[row] + v, fE); });
        stamp(3 + 2 * (s0 + 4));
    }

    // final LayerNorm, LM head, argmax over the logits as rounded to T
    BiasRows<T> biasV(a.lm_head_bias, g.V, b, g.G, smBias);
    loadFlagged(xres, wsX, g.d, flag(5 * g.L - 1), tid, biasV);
    stamp(4 + 2 * (5 * g.L - 1));
    layerNorm<T>(g, a, b, xres, xin, ring, red, tid);
    float bestVal = -INFINITY;
    int bestIdx = 0x7fffffff;
    T* logits = static_cast<T*>(a.logits);
    gemv<T>(g, a, xin, g.V, g.d, b, g.G, ring, part, biasV, tid, [&](int row, float v) {
        if (bad)
        {
            v = NAN;
        }
        T const rounded = fromFloat<T>(v);
        logits[row] = rounded;
        float const r = toFloat<T>(rounded);
        if (better(r, row, bestVal, bestIdx))
        {
            bestVal = r;
            bestIdx = row;
        }
    });
    if (timeline != nullptr && tid == 0)
    {
        timeline[3 + 10 * g.L] = clock64();
        timeline[1] = globalTimer();
    }
    int const warp = tid / 32, lane = tid & 31;
    warpBest(bestVal, bestIdx);
    int* redIdx = reinterpret_cast<int*>(red + kConsumerWarps);
    if (lane == 0)
    {
        red[warp] = bestVal;
        redIdx[warp] = bestIdx;
    }
    consumerSync();
    if (warp == 0)
    {
        bestVal = lane < kConsumerWarps ? red[lane] : -INFINITY;
        bestIdx = lane < kConsumerWarps ? redIdx[lane] : 0x7fffffff;
        warpBest(bestVal, bestIdx);
        unsigned ticket = 0;
        if (lane == 0)
        {
            // the block's best as (index, value bits): a plain 8-byte word
            ws[g.wsBest + b] = (static_cast<uint64_t>(static_cast<unsigned>(bestIdx)) << 32) | __float_as_uint(bestVal);
            __threadfence();
            ticket = atomicAdd(&counters[0], 1u);
        }
        ticket = __shfl_sync(0xffffffffu, ticket, 0);
        if (ticket == static_cast<unsigned>(g.G) - 1) // the last block: every other one has finished its reads
        {
            __threadfence();
            bestVal = -INFINITY;
            bestIdx = 0x7fffffff;
            for (int i = lane; i < g.G; i += 32)
            {
                uint64_t const w = __ldcg(reinterpret_cast<unsigned long long const*>(ws + g.wsBest + i));
                float const v = __uint_as_float(static_cast<unsigned>(w));
                int const k = static_cast<int>(w >> 32);
                if (better(v, k, bestVal, bestIdx))
                {
                    bestVal = v;
                    bestIdx = k;
                }
            }
            warpBest(bestVal, bestIdx);
            if (lane == 0)
            {
                if (a.next_token != nullptr)
                {
                    a.next_token[0] = bad ? -1 : bestIdx;
                }
                counters[0] = 0u;
                counters[1] = generation + 1u;
            }
        }
    }
}

#else // kernels of compute capability 9.0 only; rfa_lm_step_check refuses older devices

template <typename T>
__global__ void lmDecodeStepKernel(__grid_constant__ Geometry const, __grid_constant__ rfa_lm_step_args_t const)
{
}

#endif

// false where the geometry does not fit this device
inline bool geometryOnDevice(rfa_lm_step_args_t const& a, Geometry& g)
{
    int device = 0, count = 0, shared = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess
        || cudaDeviceGetAttribute(&shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    {
        cudaGetLastError();
        return false;
    }
    return makeGeometry(a, count, shared, g);
}

template <typename T>
bool fitsOneBlockPerMultiprocessor(int smBytes)
{
    static int checked = 0; // the largest size known to fit (the attribute only grows)
    if (smBytes <= checked)
    {
        return true;
    }
    if (cudaFuncSetAttribute(lmDecodeStepKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smBytes) != cudaSuccess)
    {
        cudaGetLastError();
        return false;
    }
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, lmDecodeStepKernel<T>, kThreads, smBytes) != cudaSuccess)
    {
        cudaGetLastError();
        return false;
    }
    if (blocks >= 1)
    {
        checked = smBytes;
    }
    return blocks >= 1;
}

} // namespace lmstep
} // namespace rfa

using rfa::lmstep::Geometry;

namespace
{

int checkArgs(rfa_lm_step_args_t const* a, Geometry* out)
{
    if (a == nullptr)
    {
        return RFA_ERR_NULL;
    }
    for (int l = 0; l < a->n_layers && l < RFA_LM_STEP_MAX_LAYERS; ++l)
    {
        if (a->states[l] == nullptr)
        {
            return RFA_ERR_NULL;
        }
    }
    if (!a->layers || !a->embed || !a->ln_f_weight || !a->ln_f_bias || !a->lm_head_weight || !a->token
        || !a->position || !a->logits || !a->workspace)
    {
        return RFA_ERR_NULL;
    }
    if (a->dtype != RFA_FLOAT16 && a->dtype != RFA_BFLOAT16)
    {
        return RFA_ERR_DTYPE;
    }
    if ((a->kind != RFA_FEATURES_GAUSSIAN && a->kind != RFA_FEATURES_ARCCOS) || !(a->eps > 0.f) || !std::isfinite(a->eps)
        || !(a->layer_norm_eps >= 0.f) || !std::isfinite(a->layer_norm_eps) || !std::isfinite(a->embed_scale))
    {
        return RFA_ERR_SHAPE;
    }
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess || major != 9)
    {
        cudaGetLastError();
        return RFA_ERR_ARCH;
    }
    Geometry g{};
    if (!rfa::lmstep::geometryOnDevice(*a, g))
    {
        return RFA_ERR_SHAPE;
    }
    bool const fits = a->dtype == RFA_BFLOAT16 ? rfa::lmstep::fitsOneBlockPerMultiprocessor<__nv_bfloat16>(g.smBytes)
                                               : rfa::lmstep::fitsOneBlockPerMultiprocessor<__half>(g.smBytes);
    if (!fits)
    {
        return RFA_ERR_ARCH;
    }
    if (out != nullptr)
    {
        *out = g;
    }
    return RFA_OK;
}

} // namespace

extern "C" {

int rfa_lm_step_check(rfa_lm_step_args_t const* a)
{
    return checkArgs(a, nullptr);
}

size_t rfa_lm_step_workspace_size(rfa_lm_step_args_t const* a)
{
    Geometry g{};
    if (a == nullptr || !rfa::lmstep::geometryOnDevice(*a, g))
    {
        return 0;
    }
    return static_cast<size_t>(g.wsWords) * 8;
}

int rfa_lm_step(rfa_lm_step_args_t const* a, cudaStream_t stream)
{
    Geometry g{};
    int const status = checkArgs(a, &g);
    if (status != RFA_OK)
    {
        return status;
    }
    if (a->dtype == RFA_BFLOAT16)
    {
        rfa::lmstep::lmDecodeStepKernel<__nv_bfloat16><<<g.G, rfa::lmstep::kThreads, g.smBytes, stream>>>(g, *a);
    }
    else
    {
        rfa::lmstep::lmDecodeStepKernel<__half><<<g.G, rfa::lmstep::kThreads, g.smBytes, stream>>>(g, *a);
    }
    return cudaGetLastError() == cudaSuccess ? RFA_OK : RFA_ERR_LAUNCH;
}

} // extern "C"
