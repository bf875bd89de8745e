// Kernel tests: every path and dtype against the float64 sequential reference, outputs poisoned first.
//   rfa_kernel_tests            the full list (runs on the GPU)
//   rfa_kernel_tests --quick    a few small cases (for compute-sanitizer memcheck / racecheck)
#include "causal_gated_scan.h"
#include "cuda_check.h"
#include "scan_reference.h"

#include <cstdio>
#include <cstring>
#include <string>

using namespace rfa_test;


template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<float>
{
    static constexpr rfa_dtype_t value = RFA_FLOAT32;
    static constexpr char const* name = "fp32";
    static constexpr double tol = 1e-5;
};
template <>
struct DtypeOf<__half>
{
    static constexpr rfa_dtype_t value = RFA_FLOAT16;
    static constexpr char const* name = "fp16";
    static constexpr double tol = 1e-2;
};
template <>
struct DtypeOf<__nv_bfloat16>
{
    static constexpr rfa_dtype_t value = RFA_BFLOAT16;
    static constexpr char const* name = "bf16";
    static constexpr double tol = 1e-2;
};

template <typename X>
X* upload(std::vector<X> const& h)
{
    if (h.empty())
    {
        return nullptr;
    }
    X* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, h.size() * sizeof(X)));
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(X), cudaMemcpyHostToDevice));
    return d;
}

struct Case
{
    int B, T, H, F, Dv;
    Gate gate;
    bool initialState;
    bool inPlace;
    bool clamp = false; // every row in the normaliser's clamp, its max |num| in the upper value half
    int workspaceSlabs = 0; // dispatch path: a workspace of this many [F, Dv + 1] fp32 slabs; 0 = as asked
};

// path: -1 = the dispatcher (step kernel for T == 1, chunked otherwise), 0 = chunked, 1 = step loop,
// 2 = chunked with the mma.sync prefill where the wgmma one would run
template <typename T>
bool runCase(Case const& c, int path, uint64_t seed)
{
    Problem p = makeProblem(c.B, c.T, c.H, c.F, c.Dv, c.gate, c.initialState || c.inPlace, seed, c.clamp);
    roundActivations<T>(p);
    double const eps = 1e-3;
    std::vector<double> refOut, refState;
    reference(p, eps, refOut, refState);

    T* dq = upload(toStorage<T>(p.q));
    T* dk = upload(toStorage<T>(p.k));
    T* dv = upload(toStorage<T>(p.v));
    T* dg = upload(toStorage<T>(p.g));
    float* ds0 = upload(std::vector<float>(p.s0.begin(), p.s0.end()));
    size_t const outCount = refOut.size(), stateCount = refState.size();
    T* dout = nullptr;
    float* dstate = nullptr;
    CUDA_CHECK(cudaMalloc(&dout, outCount * sizeof(T)));
    CUDA_CHECK(cudaMemset(dout, 0xFF, outCount * sizeof(T))); // NaN in every dtype
    if (c.inPlace)
    {
        dstate = ds0;
    }
    else
    {
        CUDA_CHECK(cudaMalloc(&dstate, stateCount * sizeof(float)));
        CUDA_CHECK(cudaMemset(dstate, 0xFF, stateCount * sizeof(float)));
    }
    rfa_scan_args_t a{c.B, c.T, c.H, c.F, c.Dv, DtypeOf<T>::value, float(eps), dq, dk, dv, dg,
        (c.initialState || c.inPlace) ? ds0 : nullptr, dout, dstate, RFA_FLOAT32};
    // the dispatcher gets the workspace it asks for (with it the Hopper prefill may split the sequence)
    size_t const workspaceBytes = c.workspaceSlabs > 0 ? size_t(c.workspaceSlabs) * c.F * (c.Dv + 1) * sizeof(float)
                                                       : rfa_scan_workspace_size(c.B, c.T, c.H, c.F, c.Dv, DtypeOf<T>::value);
    void* workspace = nullptr;
    if (path < 0 && workspaceBytes > 0)
    {
        CUDA_CHECK(cudaMalloc(&workspace, workspaceBytes));
        CUDA_CHECK(cudaMemset(workspace, 0xFF, workspaceBytes));
    }
    int const status = path < 0 ? rfa_causal_gated_scan(&a, workspace, workspaceBytes, 0) : rfa_causal_gated_scan_path(&a, path, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> out(outCount);
    std::vector<float> state(stateCount);
    CUDA_CHECK(cudaMemcpy(out.data(), dout, outCount * sizeof(T), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(state.data(), dstate, stateCount * sizeof(float), cudaMemcpyDeviceToHost));
    double const eOut = relErr(fromStorage(out), refOut);
    double const eState = relErr(state, refState);
    double const tol = DtypeOf<T>::tol;
    // The state is stored and accumulated in fp32; with half activations the tensor-core products round the
    // scaled keys/values to the activation dtype, so it is held to the dtype's tolerance (op_contract.md).
    bool const ok = status == RFA_OK && eOut <= tol && eState <= tol;
    std::printf("%s %-4s path=%-5s B=%-3d T=%-5d H=%-3d F=%-3d Dv=%-3d gate=%-8s s0=%d inplace=%d%s  out %.2e  state %.2e%s\n",
        ok ? "ok  " : "FAIL", DtypeOf<T>::name, path < 0 ? "auto" : (path == 0 ? "chunk" : (path == 1 ? "step" : "mma")), c.B, c.T, c.H, c.F,
        c.Dv, gateName(c.gate), int(c.initialState), int(c.inPlace),
        (std::string(c.clamp ? " clamp" : "") + (c.workspaceSlabs > 0 && path < 0 ? " workspace=" + std::to_string(c.workspaceSlabs) + " slabs" : "")).c_str(), eOut, eState,
        status == RFA_OK ? "" : (std::string("  status: ") + rfa_status_string(status)).c_str());
    for (void* ptr : {(void*) dq, (void*) dk, (void*) dv, (void*) dg, (void*) ds0, (void*) dout, workspace})
    {
        cudaFree(ptr);
    }
    if (!c.inPlace)
    {
        cudaFree(dstate);
    }
    return ok;
}

int main(int argc, char** argv)
{
    bool const quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    std::vector<Case> cases;
    if (quick)
    {
        cases = {{2, 70, 2, 32, 32, Gate::kRandom, true, false}, {1, 1, 3, 64, 80, Gate::kNone, false, false},
            {1, 33, 2, 32, 144, Gate::kNear1, true, true},
            {1, 150, 2, 128, 64, Gate::kRandom, true, true}, // tensor-core prefill, 3 stages, in place
            {1, 1600, 1, 128, 64, Gate::kRandom, true, true}, // Hopper prefill split in 3 segments, in place
            {1, 70, 1, 64, 64, Gate::kNear1, true, false, true}, // the normaliser's clamp on tensor cores
            {1, 70, 1, 64, 128, Gate::kNone, true, false},   // tensor-core prefill, 2 stages
            {2, 2, 3, 256, 64, Gate::kRandom, true, true}};  // staged step, 67 KB of shared memory, in place
    }
    else
    {
        cases = {
            {1, 1, 1, 32, 32, Gate::kRandom, false, false},
            {2, 1, 4, 128, 64, Gate::kRandom, true, false},
            {2, 1, 4, 256, 256, Gate::kNone, true, true},
            {2, 7, 3, 32, 32, Gate::kNone, false, false},
            {2, 65, 2, 64, 48, Gate::kRandom, true, false},
            {1, 4097, 2, 128, 64, Gate::kRandom, true, false},
            {1, 4097, 1, 64, 32, Gate::kNone, false, false},
            {64, 5, 16, 64, 32, Gate::kRandom, true, false},   // B*H = 1024
            {128, 3, 8, 32, 16, Gate::kNone, false, false},    // B*H = 1024, Dv = 16
            {2, 300, 2, 128, 64, Gate::kNear0, true, false},
            {2, 300, 2, 128, 64, Gate::kNear1, true, false},
            {2, 200, 2, 64, 64, Gate::kExact, true, false},
            {1, 130, 2, 256, 256, Gate::kRandom, true, false}, // 4-block clusters
            {1, 100, 2, 96, 80, Gate::kRandom, true, true},    // partial value tile, in place
            {2, 100, 2, 48, 144, Gate::kNone, true, false},
            {1, 64, 1, 160, 208, Gate::kNear1, false, false},
            // the tensor-core prefill (fp16/bf16, F in {64, 128}, Dv in {64, 128}); fp32 takes the general kernel
            {4, 1000, 4, 128, 64, Gate::kRandom, true, true},
            {2, 257, 3, 128, 128, Gate::kNear1, true, false},
            {3, 129, 2, 64, 128, Gate::kExact, false, false},
            {2, 190, 2, 64, 64, Gate::kNone, true, true},
            {2, 64, 2, 128, 64, Gate::kNear0, false, false},
            {2, 130, 3, 128, 64, Gate::kNone, true, false},     // ungated, both prefills
            {64, 20, 16, 128, 64, Gate::kRandom, true, false},  // B*H = 1024, both prefills
            {3, 128, 2, 128, 64, Gate::kExact, false, false},   // exactly two chunks (the TMA ring's prologue), gates 0 and 1
            // the Hopper prefill's sequence split (dispatch path, few (b, h), >= 16 chunks): segments of 8+ chunks
            {1, 2000, 2, 128, 64, Gate::kNone, true, false},     // ungated, 4 segments
            {2, 1100, 1, 128, 64, Gate::kNear0, false, false},   // 18 chunks: 2 segments would not pay, no split
            {2, 1600, 1, 128, 64, Gate::kNear0, false, false},   // 3 segments, no initial state
            {1, 1500, 2, 128, 64, Gate::kNear1, true, true, true}, // 3 segments, in place, the clamp
            {1, 4097, 1, 128, 64, Gate::kRandom, true, false, false, 3}, // a workspace of 3 slabs: 3 segments, not 8
            {1, 4097, 1, 128, 64, Gate::kRandom, true, true, false, 2},  // 2 slabs: too few to split
            {3, 1, 5, 256, 48, Gate::kNear1, false, false},   // staged step, F = 256, no initial state
            {2, 2, 3, 256, 64, Gate::kRandom, true, true},    // staged step, 67 KB of shared memory, in place
            // the normaliser's clamp: each row's max |num| in the upper value half (the other value half of the
            // tensor-core prefill's warps, other blocks of the general kernel's clusters)
            {2, 130, 3, 128, 64, Gate::kNear1, true, true, true},
            {1, 100, 2, 64, 64, Gate::kNear1, true, false, true},
            {2, 70, 2, 48, 160, Gate::kNear1, true, false, true}, // value tiles 0-63 (small), 64-127, 128-159
        };
    }
    int failures = 0;
    uint64_t seed = 1;
    for (Case const& c : cases)
    {
        for (int path : {-1, 0, 1, 2})
        {
            if (path == 2 && !(c.F == 128 && c.Dv == 64))
            {
                continue; // the same kernels as path 0
            }
            if (c.T > 1000 && path == 1)
            {
                continue; // one launch per step: covered by the shorter cases
            }
            if (path >= 0 && quick && c.T == 1)
            {
                continue;
            }
            failures += !runCase<float>(c, path, seed);
            failures += !runCase<__half>(c, path, seed);
            failures += !runCase<__nv_bfloat16>(c, path, seed);
        }
        ++seed;
    }
    std::printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
