// Chunked prefill of rfa::CausalGatedScan (docs/op_contract.md), any T.
//
// Grid (tiles, H, B): the blocks of one (b, h) each own a tile of up to 64 value columns and form a thread
// block cluster, so the normaliser's max over all Dv columns is exchanged through distributed shared
// memory. Each block walks the sequence in chunks of C steps with its fp32 state tile in shared memory:
//   scores  A   = Q K'^T ⊙ D        D[t, i] = exp(sum_{i<j<=t} log g_j), i <= t     (C x C)
//   num         = diag(exp(b)) Q S + A V                                             (C x W)
//   den         = rowsum(A) + exp(b_t) q_t . z
//   state   S   = exp(b_C) S + K'^T diag(exp(b_C - b)) V,   z likewise                (F x W)
// with K' = (1 - g) K and b the prefix sums of log g inside the chunk, taken in fp64 so that differences
// of prefix sums are exact. fp16/bf16 use tensor cores (WMMA, fp32 accumulation); fp32 uses FMA.
#include "scan_common.cuh"
#include "scan_launch.h"

#include <cooperative_groups.h>
#include <mma.h>
#include <mutex>
#include <type_traits>

namespace cg = cooperative_groups;

namespace rfa
{
namespace
{

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Value columns per block: 64, or 32 past 128 features so the tiles fit in shared memory (Dv <= 256 then
// takes at most 8 blocks: a portable cluster size).
__host__ __device__ inline int tileWidth(int F, int Dv)
{
    int const w = F > 128 ? 32 : 64;
    return Dv < w ? Dv : w;
}

template <typename T>
struct ChunkSize
{
    static constexpr int value = 64;
};
template <>
struct ChunkSize<float>
{
    static constexpr int value = 32;
};

// Leading dimensions of the shared-memory tiles, padded by 16 bytes per row: rows then start 4 banks apart,
// so the 16x16 WMMA tile loads do not hit one bank 16 times, and stay 16-byte aligned.
struct ChunkLd
{
    int q, v, a, ah, s, sh, num;
};

__host__ __device__ inline ChunkLd chunkLd(int C, int F, int W, int elem, bool half)
{
    int const padT = 16 / elem;
    ChunkLd l{};
    l.q = F + padT;
    l.v = W + padT;
    l.a = C + 4;
    l.ah = half ? C + padT : l.a;
    l.s = W + 4;
    l.sh = half ? W + padT : l.s;
    l.num = W + 4;
    return l;
}

struct ChunkSmem
{
    size_t qs, ks, vs, vd, as, ah, ss, sh, num, zs, aLog, keyScale, fromStart, toEnd, denIntra, qz, rowMax, bcum,
        scalars, total;
};

__host__ __device__ inline ChunkSmem chunkSmem(int C, int F, int W, int elem, bool half)
{
    ChunkSmem s{};
    ChunkLd const ld = chunkLd(C, F, W, elem, half);
    size_t o = 0;
    auto take = [&o](size_t bytes) {
        size_t const at = o;
        o = (o + bytes + 127) & ~size_t(127);
        return at;
    };
    s.qs = take(size_t(C) * ld.q * elem);
    s.ks = take(size_t(C) * ld.q * elem);
    s.vs = take(size_t(C) * ld.v * elem);
    s.vd = take(size_t(C) * ld.v * elem);
    s.as = take(size_t(C) * ld.a * sizeof(float));
    s.ah = half ? take(size_t(C) * ld.ah * elem) : s.as;
    s.ss = take(size_t(F) * ld.s * sizeof(float));
    s.sh = half ? take(size_t(F) * ld.sh * elem) : s.ss;
    s.num = take(size_t(C) * ld.num * sizeof(float));
    s.zs = take(size_t(F) * sizeof(float));
    s.aLog = take(size_t(C) * sizeof(float));
    s.keyScale = take(size_t(C) * sizeof(float));
    s.fromStart = take(size_t(C) * sizeof(float));
    s.toEnd = take(size_t(C) * sizeof(float));
    s.denIntra = take(size_t(C) * sizeof(float));
    s.qz = take(size_t(C) * sizeof(float));
    s.rowMax = take(size_t(2) * C * sizeof(float));
    s.bcum = take(size_t(C) * sizeof(double));
    s.scalars = take(4 * sizeof(float));
    s.total = o;
    return s;
}

// out[m, n] = (accumulate ? beta * out[m, n] : 0) + sum_k a(m, k) b(k, n), by every thread of the block.
template <typename FA, typename FB>
__device__ void fmaGemm(float* out, int ldo, int M, int N, int K, FA a, FB b, bool accumulate, float beta)
{
    for (int idx = threadIdx.x; idx < M * N; idx += blockDim.x)
    {
        int const m = idx / N, n = idx % N;
        float s = accumulate ? beta * out[m * ldo + n] : 0.f;
        for (int k = 0; k < K; ++k)
        {
            s = fmaf(a(m, k), b(k, n), s);
        }
        out[m * ldo + n] = s;
    }
}

// Tensor-core GEMM on shared memory, 16x16x16 tiles spread over the warps:
// out[M x N] (fp32, row-major, ldo) = (accumulate ? beta * out : 0) + A[M x K] B[K x N].
template <typename T, typename LayoutA, typename LayoutB>
__device__ void wmmaGemm(float* out, int ldo, T const* A, int lda, T const* B, int ldb, int M, int N, int K,
    bool accumulate, float beta)
{
    using namespace nvcuda;
    int const warp = threadIdx.x / 32;
    int const tilesN = N / 16;
    for (int tile = warp; tile < (M / 16) * tilesN; tile += kWarps)
    {
        int const tm = tile / tilesN, tn = tile % tilesN;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        float* o = out + tm * 16 * ldo + tn * 16;
        if (accumulate)
        {
            wmma::load_matrix_sync(acc, o, ldo, wmma::mem_row_major);
            for (int i = 0; i < acc.num_elements; ++i)
            {
                acc.x[i] *= beta;
            }
        }
        else
        {
            wmma::fill_fragment(acc, 0.f);
        }
        for (int kk = 0; kk < K; kk += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
            T const* pa = std::is_same<LayoutA, wmma::row_major>::value ? A + tm * 16 * lda + kk : A + kk * lda + tm * 16;
            T const* pb = std::is_same<LayoutB, wmma::row_major>::value ? B + kk * ldb + tn * 16 : B + tn * 16 * ldb + kk;
            wmma::load_matrix_sync(fa, pa, lda);
            wmma::load_matrix_sync(fb, pb, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(o, acc, ldo, wmma::mem_row_major);
    }
}

// Copy `rows` rows of `n` elements (n * sizeof(T) a multiple of 16 bytes) from global (row stride `stride`
// elements, rows >= valid are zero) to shared memory (row stride dstStride), scaling row r by scale[r].
template <typename T>
__device__ void loadRows(T* dst, int dstStride, T const* src, size_t stride, int rows, int valid, int n, float const* scale)
{
    int const vecs = n * int(sizeof(T)) / 16;
    constexpr int kPer = 16 / sizeof(T);
    for (int idx = threadIdx.x; idx < rows * vecs; idx += blockDim.x)
    {
        int const r = idx / vecs, c = idx % vecs;
        uint4 chunk = make_uint4(0, 0, 0, 0);
        if (r < valid)
        {
            chunk = *reinterpret_cast<uint4 const*>(src + r * stride + c * kPer);
            if (scale != nullptr)
            {
                T* e = reinterpret_cast<T*>(&chunk);
                float const s = scale[r];
#pragma unroll
                for (int j = 0; j < kPer; ++j)
                {
                    e[j] = fromFloat<T>(toFloat(e[j]) * s);
                }
            }
        }
        *reinterpret_cast<uint4*>(dst + r * dstStride + c * kPer) = chunk;
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) scanChunkKernel(ChunkParams p)
{
    constexpr int C = ChunkSize<T>::value;
    constexpr bool kHalf = !std::is_same<T, float>::value;
    extern __shared__ __align__(128) unsigned char smem[];

    int const F = p.F, Dv = p.Dv, W = p.tileWidth, cols = Dv + 1;
    int const rank = blockIdx.x, clusterSize = gridDim.x;
    int const h = blockIdx.y, b = blockIdx.z;
    int const d0 = rank * W;
    int const Wr = min(W, Dv - d0);
    ChunkSmem const L = chunkSmem(C, F, W, sizeof(T), kHalf);
    ChunkLd const ld = chunkLd(C, F, W, sizeof(T), kHalf);
    T* Qs = reinterpret_cast<T*>(smem + L.qs);
    T* Ks = reinterpret_cast<T*>(smem + L.ks);
    T* Vs = reinterpret_cast<T*>(smem + L.vs);
    T* Vd = reinterpret_cast<T*>(smem + L.vd);
    float* As = reinterpret_cast<float*>(smem + L.as);
    T* Ah = reinterpret_cast<T*>(smem + L.ah);
    float* Ss = reinterpret_cast<float*>(smem + L.ss);
    T* Sh = reinterpret_cast<T*>(smem + L.sh);
    float* Num = reinterpret_cast<float*>(smem + L.num);
    float* zs = reinterpret_cast<float*>(smem + L.zs);
    float* aLog = reinterpret_cast<float*>(smem + L.aLog);
    float* keyScale = reinterpret_cast<float*>(smem + L.keyScale);
    float* fromStart = reinterpret_cast<float*>(smem + L.fromStart);
    float* toEnd = reinterpret_cast<float*>(smem + L.toEnd);
    float* denIntra = reinterpret_cast<float*>(smem + L.denIntra);
    float* qz = reinterpret_cast<float*>(smem + L.qz);
    float* rowMax = reinterpret_cast<float*>(smem + L.rowMax);
    double* bcum = reinterpret_cast<double*>(smem + L.bcum);
    float* scalars = reinterpret_cast<float*>(smem + L.scalars);
    int const warp = threadIdx.x / 32, lane = threadIdx.x % 32;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    // no clusters before sm_90: chunkNeedsClusters keeps multi-tile shapes off such devices
    (void)clusterSize;
    auto clusterBarrier = [&]() { __syncthreads(); };
#else
    cg::cluster_group cluster = cg::this_cluster();
    auto clusterBarrier = [&]() {
        if (clusterSize > 1)
        {
            cluster.sync();
        }
        else
        {
            __syncthreads();
        }
    };
#endif

    size_t const stateBase = (size_t(b) * p.H + h) * F * cols;
    for (int idx = threadIdx.x; idx < F * Wr; idx += blockDim.x)
    {
        int const f = idx / Wr, j = idx % Wr;
        Ss[f * ld.s + j] = p.stateIn ? p.stateIn[stateBase + size_t(f) * cols + d0 + j] : 0.f;
    }
    for (int f = threadIdx.x; f < F; f += blockDim.x)
    {
        zs[f] = p.stateIn ? p.stateIn[stateBase + size_t(f) * cols + Dv] : 0.f;
    }
    clusterBarrier(); // every block has read the initial state before any writes the final one (in place)

    T const* q = static_cast<T const*>(p.q);
    T const* k = static_cast<T const*>(p.k);
    T const* v = static_cast<T const*>(p.v);
    T const* g = static_cast<T const*>(p.g);
    T* out = static_cast<T*>(p.out);
    size_t const qkStride = size_t(p.H) * F, vStride = size_t(p.H) * Dv;
    int const chunks = (p.T + C - 1) / C;

    for (int n = 0; n < chunks; ++n)
    {
        int const t0 = n * C;
        int const valid = min(C, p.T - t0);
        // 1. gates: log g (0 when ungated or padding) and the key scale (1 - g)
        if (threadIdx.x < C)
        {
            int const c = threadIdx.x;
            float a = 0.f, ks = c < valid ? 1.f : 0.f;
            if (g != nullptr && c < valid)
            {
                float const gv = toFloat(g[(size_t(b) * p.T + t0 + c) * p.H + h]);
                a = logGate(gv);
                ks = 1.f - gv;
            }
            aLog[c] = a;
            keyScale[c] = ks;
        }
        __syncthreads();
        // 2. prefix sums of log g in fp64 (warp 0), while the others start loading
        if (warp == 0)
        {
            constexpr int kPer = C / 32;
            double local[kPer];
            double run = 0.0;
#pragma unroll
            for (int j = 0; j < kPer; ++j)
            {
                run += double(aLog[lane * kPer + j]);
                local[j] = run;
            }
            double const prefix = warpInclusiveSum(run);
            double const before = prefix - run;
#pragma unroll
            for (int j = 0; j < kPer; ++j)
            {
                bcum[lane * kPer + j] = before + local[j];
            }
        }
        T const* qRow = q + (size_t(b) * p.T + t0) * qkStride + size_t(h) * F;
        T const* kRow = k + (size_t(b) * p.T + t0) * qkStride + size_t(h) * F;
        T const* vRow = v + (size_t(b) * p.T + t0) * vStride + size_t(h) * Dv + d0;
        loadRows(Qs, ld.q, qRow, qkStride, C, valid, F, nullptr);
        loadRows(Ks, ld.q, kRow, qkStride, C, valid, F, keyScale);
        loadRows(Vs, ld.v, vRow, vStride, C, valid, Wr, nullptr);
        __syncthreads();
        if (threadIdx.x < C)
        {
            int const c = threadIdx.x;
            double const last = bcum[C - 1];
            fromStart[c] = expf(float(bcum[c]));
            toEnd[c] = expf(float(last - bcum[c]));
            if (c == 0)
            {
                scalars[0] = expf(float(last));
            }
        }
        // 3. scores = Q K'^T
        if constexpr (kHalf)
        {
            wmmaGemm<T, nvcuda::wmma::row_major, nvcuda::wmma::col_major>(As, ld.a, Qs, ld.q, Ks, ld.q, C, C, F, false, 0.f);
        }
        else
        {
            fmaGemm(As, ld.a, C, C, F, [&](int m, int kk) { return toFloat(Qs[m * ld.q + kk]); },
                [&](int kk, int nn) { return toFloat(Ks[nn * ld.q + kk]); }, false, 0.f);
        }
        __syncthreads();
        // 4. decay mask; half copies of A and S; V scaled to the chunk's end
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x)
        {
            int const t = idx / C, i = idx % C;
            float const a = i <= t ? As[t * ld.a + i] * expf(float(bcum[t] - bcum[i])) : 0.f;
            if constexpr (kHalf)
            {
                Ah[t * ld.ah + i] = fromFloat<T>(a);
            }
            else
            {
                As[t * ld.a + i] = a;
            }
        }
        for (int idx = threadIdx.x; idx < C * Wr; idx += blockDim.x)
        {
            int const c = idx / Wr, j = idx % Wr;
            Vd[c * ld.v + j] = fromFloat<T>(toFloat(Vs[c * ld.v + j]) * toEnd[c]);
        }
        if constexpr (kHalf)
        {
            for (int idx = threadIdx.x; idx < F * Wr; idx += blockDim.x)
            {
                int const f = idx / Wr, j = idx % Wr;
                Sh[f * ld.sh + j] = fromFloat<T>(Ss[f * ld.s + j]);
            }
        }
        __syncthreads();
        // 5. row sums of A (as rounded for the tensor cores) and q . z, one warp per row
        for (int t = warp; t < C; t += kWarps)
        {
            float s = 0.f;
            for (int i = lane; i < C; i += 32)
            {
                s += toFloat(Ah[t * ld.ah + i]);
            }
            float dz = 0.f;
            for (int f = lane; f < F; f += 32)
            {
                dz = fmaf(toFloat(Qs[t * ld.q + f]), zs[f], dz);
            }
            s = warpSum(s);
            dz = warpSum(dz);
            if (lane == 0)
            {
                denIntra[t] = s;
                qz[t] = dz;
            }
        }
        // 6. num = Q S (the state before this chunk), scaled per row by exp(b_t)
        if constexpr (kHalf)
        {
            wmmaGemm<T, nvcuda::wmma::row_major, nvcuda::wmma::row_major>(Num, ld.num, Qs, ld.q, Sh, ld.sh, C, Wr, F, false, 0.f);
        }
        else
        {
            fmaGemm(Num, ld.num, C, Wr, F, [&](int m, int kk) { return Qs[m * ld.q + kk]; },
                [&](int kk, int nn) { return Ss[kk * ld.s + nn]; }, false, 0.f);
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * Wr; idx += blockDim.x)
        {
            Num[(idx / Wr) * ld.num + idx % Wr] *= fromStart[idx / Wr];
        }
        __syncthreads();
        // 7. num += A V; state update S = exp(b_C) S + K'^T Vd; z likewise (independent, no barrier between)
        float const lam = scalars[0];
        if constexpr (kHalf)
        {
            wmmaGemm<T, nvcuda::wmma::row_major, nvcuda::wmma::row_major>(Num, ld.num, Ah, ld.ah, Vs, ld.v, C, Wr, C, true, 1.f);
            wmmaGemm<T, nvcuda::wmma::col_major, nvcuda::wmma::row_major>(Ss, ld.s, Ks, ld.q, Vd, ld.v, F, Wr, C, true, lam);
        }
        else
        {
            fmaGemm(Num, ld.num, C, Wr, C, [&](int m, int kk) { return As[m * ld.a + kk]; },
                [&](int kk, int nn) { return Vs[kk * ld.v + nn]; }, true, 1.f);
            fmaGemm(Ss, ld.s, F, Wr, C, [&](int m, int kk) { return Ks[kk * ld.q + m]; },
                [&](int kk, int nn) { return Vd[kk * ld.v + nn]; }, true, lam);
        }
        for (int f = threadIdx.x; f < F; f += blockDim.x)
        {
            float s = lam * zs[f];
            for (int c = 0; c < C; ++c)
            {
                s = fmaf(toEnd[c], toFloat(Ks[c * ld.q + f]), s);
            }
            zs[f] = s;
        }
        __syncthreads();
        // 8. readout: the max |num| of each row over all value columns of the cluster
        float* myMax = rowMax + (n & 1) * C;
        for (int t = warp; t < C; t += kWarps)
        {
            float m = 0.f;
            for (int j = lane; j < Wr; j += 32)
            {
                m = fmaxf(m, fabsf(Num[t * ld.num + j]));
            }
            m = warpMaxAbs(m);
            if (lane == 0)
            {
                myMax[t] = m;
            }
        }
        clusterBarrier();
        T* outRow = out + (size_t(b) * p.T + t0) * vStride + size_t(h) * Dv + d0;
        for (int t = warp; t < valid; t += kWarps)
        {
            float m = myMax[t];
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
            for (int r = 0; r < clusterSize; ++r)
            {
                if (r != rank)
                {
                    m = fmaxf(m, cluster.map_shared_rank(myMax, r)[t]);
                }
            }
#endif
            float const den = denIntra[t] + fromStart[t] * qz[t];
            float const scale = readoutScale(den, m, p.eps);
            for (int j = lane; j < Wr; j += 32)
            {
                outRow[t * vStride + j] = fromFloat<T>(Num[t * ld.num + j] * scale);
            }
        }
        __syncthreads();
    }

    for (int idx = threadIdx.x; idx < F * Wr; idx += blockDim.x)
    {
        int const f = idx / Wr, j = idx % Wr;
        p.stateOut[stateBase + size_t(f) * cols + d0 + j] = Ss[f * ld.s + j];
    }
    if (rank == 0)
    {
        for (int f = threadIdx.x; f < F; f += blockDim.x)
        {
            p.stateOut[stateBase + size_t(f) * cols + Dv] = zs[f];
        }
    }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
    if (clusterSize > 1)
    {
        cluster.sync(); // no block may exit while another may still read its shared memory
    }
#endif
}

template <typename T>
cudaError_t launchChunkTyped(ChunkParams p, cudaStream_t stream)
{
    constexpr int C = ChunkSize<T>::value;
    constexpr bool kHalf = !std::is_same<T, float>::value;
    p.tileWidth = tileWidth(p.F, p.Dv);
    int const tiles = (p.Dv + p.tileWidth - 1) / p.tileWidth;
    size_t const bytes = chunkSmem(C, p.F, p.tileWidth, sizeof(T), kHalf).total;
    static std::once_flag configured;
    static cudaError_t configError = cudaSuccess;
    std::call_once(configured, [] {
        int device = 0, optin = 0;
        configError = cudaGetDevice(&device);
        if (configError == cudaSuccess)
        {
            configError = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
        }
        if (configError == cudaSuccess)
        {
            configError = cudaFuncSetAttribute(scanChunkKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
        }
    });
    if (configError != cudaSuccess)
    {
        return configError;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(tiles, p.H, p.B);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = bytes;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = tiles;
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, scanChunkKernel<T>, p);
}

} // namespace

bool chunkNeedsClusters(int F, int Dv, int dtype)
{
    if (chunkMmaSupports(F, Dv, dtype))
    {
        return false;
    }
    int const w = tileWidth(F, Dv);
    return (Dv + w - 1) / w > 1;
}

cudaError_t launchChunk(ChunkParams const& p, int dtype, cudaStream_t stream)
{
    if (!p.mmaSyncOnly && chunkWgmmaSupports(p.F, p.Dv, dtype))
    {
        return launchChunkWgmma(p, dtype, stream);
    }
    if (chunkMmaSupports(p.F, p.Dv, dtype))
    {
        return launchChunkMma(p, dtype, stream);
    }
    switch (dtype)
    {
    case 0: return launchChunkTyped<float>(p, stream);
    case 1: return launchChunkTyped<__half>(p, stream);
    default: return launchChunkTyped<__nv_bfloat16>(p, stream);
    }
}

} // namespace rfa
