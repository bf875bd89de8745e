// Drives the CausalGatedScan plugin exactly as TensorRT would, without TensorRT's runtime:
// dlopen the plugin library -> getCreators / setLoggerFinder -> createPlugin(fields, kBUILD) -> capability
// interfaces -> getOutputDataTypes, getOutputShapes, supportsFormatCombination, configurePlugin, workspace
// size, getAliasedInput -> onShapeChange, enqueue on device buffers (outputs poisoned) -> clone, enqueue ->
// getFieldsToSerialize -> createPlugin(kRUNTIME), enqueue -> attachToContext, enqueue. Results are compared
// with the float64 reference; the rebuilt plugins must reproduce the first run bit for bit.
//
//   rfa_trt_plugin_tests path/to/librfa_trt_plugin.so
#include "NvInferRuntime.h"
#include "cuda_check.h"
#include "scan_reference.h"

#include <cuda_runtime.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>

using namespace nvinfer1;
using namespace rfa_test;


namespace
{

int gFailures = 0;

void expect(bool ok, std::string const& what)
{
    if (!ok)
    {
        ++gFailures;
        std::printf("  FAIL: %s\n", what.c_str());
    }
}

class Logger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        ++messages[int(severity)];
        if (verbose)
        {
            std::printf("  [plugin log %d] %s\n", int(severity), msg);
        }
    }
    std::map<int, int> messages;
    bool verbose{false};
};

class LoggerFinder : public ILoggerFinder
{
public:
    explicit LoggerFinder(ILogger* l)
        : logger(l)
    {
    }
    ILogger* findLogger() override
    {
        return logger;
    }
    ILogger* logger;
};

// IExprBuilder over constants, enough for shape inference with every dimension known.
class ConstDimImpl : public apiv::VDimensionExpr
{
public:
    explicit ConstDimImpl(int64_t v)
        : value(v)
    {
    }
    bool isConstant() const override
    {
        return true;
    }
    int64_t getConstantValue() const override
    {
        return value;
    }
    bool isSizeTensor() const override
    {
        return false;
    }
    int64_t value;
};

class ConstDim : public IDimensionExpr
{
public:
    explicit ConstDim(int64_t v)
        : impl(v)
    {
        mImpl = &impl;
    }
    ~ConstDim() noexcept override = default;
    ConstDimImpl impl;
};

class ConstBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        dims.push_back(std::make_unique<ConstDim>(value));
        return dims.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        int64_t const x = a.getConstantValue(), y = b.getConstantValue();
        int64_t r = 0;
        switch (op)
        {
        case DimensionOperation::kSUM: r = x + y; break;
        case DimensionOperation::kPROD: r = x * y; break;
        case DimensionOperation::kSUB: r = x - y; break;
        case DimensionOperation::kMAX: r = x > y ? x : y; break;
        case DimensionOperation::kMIN: r = x < y ? x : y; break;
        default: r = -999; break;
        }
        return constant(r);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    std::vector<std::unique_ptr<ConstDim>> dims;
};

class ConstBuilder : public IExprBuilder
{
public:
    ConstBuilder()
    {
        mImpl = &impl;
    }
    ~ConstBuilder() noexcept override = default;
    ConstBuilderImpl impl;
};

Dims dims(std::initializer_list<int64_t> d)
{
    Dims r{};
    r.nbDims = int32_t(d.size());
    int i = 0;
    for (int64_t x : d)
    {
        r.d[i++] = x;
    }
    return r;
}

PluginTensorDesc desc(Dims const& d, DataType t)
{
    PluginTensorDesc p{};
    p.dims = d;
    p.type = t;
    p.format = TensorFormat::kLINEAR;
    p.scale = 1.f;
    return p;
}

template <typename T>
DataType trtType();
template <>
DataType trtType<float>()
{
    return DataType::kFLOAT;
}
template <>
DataType trtType<__half>()
{
    return DataType::kHALF;
}
template <>
DataType trtType<__nv_bfloat16>()
{
    return DataType::kBF16;
}
template <>
DataType trtType<int8_t>()
{
    return DataType::kINT8;
}

// A state as stored (fp32, bf16, or int8 rows of Dv + 1 entries) and the values it stands for.
template <typename S>
std::vector<S> stateStorage(std::vector<double> const& x, int)
{
    return toStorage<S>(x);
}
template <>
std::vector<int8_t> stateStorage<int8_t>(std::vector<double> const& x, int Dv)
{
    return toInt8Rows(x, Dv + 1);
}
template <typename S>
std::vector<double> stateValues(std::vector<S> const& x, int)
{
    return fromStorage(x);
}
template <>
std::vector<double> stateValues<int8_t>(std::vector<int8_t> const& x, int Dv)
{
    return fromInt8Rows(x, Dv + 1);
}

template <typename X>
X* upload(std::vector<X> const& h)
{
    X* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(X)));
    if (!h.empty())
    {
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(X), cudaMemcpyHostToDevice));
    }
    return d;
}

struct Library
{
    IPluginCreatorV3One* creator{nullptr};
};

IPluginV3OneRuntime* runtimeOf(IPluginV3* plugin)
{
    return static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

IPluginV3* create(IPluginCreatorV3One* creator, float eps, int32_t inPlace, TensorRTPhase phase)
{
    PluginField fields[] = {PluginField("eps", &eps, PluginFieldType::kFLOAT32, 1),
        PluginField("in_place", &inPlace, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{2, fields};
    return creator->createPlugin("scan", &fc, phase);
}

// As deserialized from an engine that reserved `workspaceBytes` for the scan.
IPluginV3* createForEngine(IPluginCreatorV3One* creator, float eps, int32_t inPlace, int64_t workspaceBytes)
{
    PluginField fields[] = {PluginField("eps", &eps, PluginFieldType::kFLOAT32, 1),
        PluginField("in_place", &inPlace, PluginFieldType::kINT32, 1),
        PluginField("workspace_bytes", &workspaceBytes, PluginFieldType::kINT64, 1)};
    PluginFieldCollection fc{3, fields};
    return creator->createPlugin("scan", &fc, TensorRTPhase::kRUNTIME);
}

struct Shape
{
    int B, T, H, F, Dv;
};

// rfa_scan_workspace_bound of the plugin library under test (exported with the kernels' C ABI)
using WorkspaceBound = size_t (*)(int);
WorkspaceBound gWorkspaceBound = nullptr;
// rfa_scan_state_workspace_size: the fp32 copy an int8-row state's prefill needs
using StateWorkspaceSize = size_t (*)(int, int, int, int, int);
StateWorkspaceSize gStateWorkspaceSize = nullptr;

// Whether the scan splits this problem's sequence when given its workspace: the Hopper prefill's sizes on a
// compute capability 9.0 device, few enough (b, h) for three segments of eight chunks (as segmentCount).
bool splitRuns(int B, int T, int H, int F, int Dv, DataType type)
{
    int device = 0, major = 0, minor = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    int const chunks = (T + 63) / 64;
    return major == 9 && minor == 0 && F == 128 && Dv == 64 && type != DataType::kFLOAT && 3 * B * H <= sms && chunks >= 24;
}

// E: the activations' element type; S: the state's storage (float, or __nv_bfloat16 or int8_t rows with a state
// input).
template <typename E, typename S = float>
void runCase(IPluginCreatorV3One* creator, bool gated, bool withState, bool inPlace, Shape shape = {3, 77, 2, 64, 48},
    Gate gates = Gate::kRandom)
{
    constexpr bool kBf16State = std::is_same<S, __nv_bfloat16>::value;
    constexpr bool kInt8State = std::is_same<S, int8_t>::value;
    int const B = shape.B, T = shape.T, H = shape.H, F = shape.F, Dv = shape.Dv; // T: steps; E: element type
    int const stateCols = Dv + (withState && kInt8State ? 2 : 1);
    std::string const name = std::string(trtType<E>() == DataType::kFLOAT ? "fp32" : (trtType<E>() == DataType::kHALF ? "fp16" : "bf16"))
        + (gated ? std::string(" gated ") + gateName(gates) : std::string(" ungated")) + (withState ? " +state" : "") + (inPlace ? " in-place" : "") + " B=" + std::to_string(B)
        + " T=" + std::to_string(T) + " H=" + std::to_string(H) + " F=" + std::to_string(F) + " Dv=" + std::to_string(Dv)
        + (kBf16State ? " bf16-state" : "") + (kInt8State ? " int8-state" : "");
    std::printf("case %s\n", name.c_str());
    int const failuresBefore = gFailures;
    Problem p = makeProblem(B, T, H, F, Dv, gated ? gates : Gate::kNone, withState, 7);
    roundActivations<E>(p);
    if (kBf16State || kInt8State)
    {
        p.s0 = stateValues<S>(stateStorage<S>(p.s0, Dv), Dv); // the stored initial state, widened
    }
    std::vector<double> refOut, refState;
    reference(p, 1e-3, refOut, refState);
    size_t const stateCount = size_t(B) * H * F * stateCols;
    double const tol = trtType<E>() == DataType::kFLOAT ? 1e-5 : 1e-2;
    // a bf16 state is rounded once at the end: half an ulp, 2^-8, plus fp32's error (docs/op_contract.md)
    double const stateTol = kBf16State ? std::max(tol, 1.0 / 128) : tol;
    DataType const stateType = withState ? trtType<S>() : DataType::kFLOAT;

    IPluginV3* plugin = create(creator, 1e-3f, inPlace ? 1 : 0, TensorRTPhase::kBUILD);
    expect(plugin != nullptr, "createPlugin(kBUILD)");
    if (plugin == nullptr)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuildV2*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = runtimeOf(plugin);
    expect(std::strcmp(core->getPluginName(), "CausalGatedScan") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0
            && std::strcmp(core->getPluginNamespace(), "rfa") == 0,
        "name / version / namespace");
    expect(build->getNbOutputs() == 2, "getNbOutputs");

    // inputs in ONNX order: q, k, v, [g], [state]
    DataType const A = trtType<E>();
    std::vector<PluginTensorDesc> in = {desc(dims({B, T, H, F}), A), desc(dims({B, T, H, F}), A), desc(dims({B, T, H, Dv}), A)};
    int32_t stateIndex = -1;
    if (gated)
    {
        in.push_back(desc(dims({B, T, H}), A));
    }
    if (withState)
    {
        stateIndex = int32_t(in.size());
        in.push_back(desc(dims({B, H, F, stateCols}), stateType));
    }
    int32_t const nbIn = int32_t(in.size());
    std::vector<PluginTensorDesc> out = {desc(dims({B, T, H, Dv}), A), desc(dims({B, H, F, stateCols}), stateType)};

    std::vector<DataType> inTypes, outTypes(2);
    for (auto const& d : in)
    {
        inTypes.push_back(d.type);
    }
    expect(build->getOutputDataTypes(outTypes.data(), 2, inTypes.data(), nbIn) == 0 && outTypes[0] == A
            && outTypes[1] == stateType,
        "getOutputDataTypes");

    ConstBuilder eb;
    std::vector<DimsExprs> inExprs(nbIn);
    for (int32_t i = 0; i < nbIn; ++i)
    {
        inExprs[i].nbDims = in[i].dims.nbDims;
        for (int32_t j = 0; j < in[i].dims.nbDims; ++j)
        {
            inExprs[i].d[j] = eb.constant(in[i].dims.d[j]);
        }
    }
    DimsExprs outExprs[2];
    expect(build->getOutputShapes(inExprs.data(), nbIn, nullptr, 0, outExprs, 2, eb) == 0, "getOutputShapes returns 0");
    for (int o = 0; o < 2; ++o)
    {
        bool same = outExprs[o].nbDims == out[o].dims.nbDims;
        for (int32_t j = 0; same && j < outExprs[o].nbDims; ++j)
        {
            same = outExprs[o].d[j]->getConstantValue() == out[o].dims.d[j];
        }
        expect(same, "getOutputShapes output " + std::to_string(o));
    }
    if (withState)
    {
        expect(outExprs[1].d[3] == inExprs[stateIndex].d[3], "state shape passes through (no expression arithmetic)");
    }

    std::vector<DynamicPluginTensorDesc> dynIn(nbIn), dynOut(2);
    auto toDyn = [](PluginTensorDesc const& d) {
        DynamicPluginTensorDesc r{};
        r.desc = d;
        r.min = d.dims;
        r.max = d.dims;
        r.opt = d.dims;
        r.desc.dims.d[0] = -1; // batch dynamic
        if (d.dims.nbDims >= 3 && d.dims.d[1] != d.dims.d[2])
        {
            r.min.d[0] = 1;
        }
        return r;
    };
    for (int32_t i = 0; i < nbIn; ++i)
    {
        dynIn[i] = toDyn(in[i]);
    }
    for (int o = 0; o < 2; ++o)
    {
        dynOut[o] = toDyn(out[o]);
    }
    std::vector<DynamicPluginTensorDesc> all(dynIn);
    all.insert(all.end(), dynOut.begin(), dynOut.end());
    for (int32_t pos = 0; pos < nbIn + 2; ++pos)
    {
        expect(build->supportsFormatCombination(pos, all.data(), nbIn, 2), "supportsFormatCombination accepts pos " + std::to_string(pos));
        auto bad = all;
        bad[pos].desc.type = DataType::kINT32;
        expect(!build->supportsFormatCombination(pos, bad.data(), nbIn, 2), "rejects INT32 at pos " + std::to_string(pos));
        bad = all;
        bad[pos].desc.format = TensorFormat::kCHW32;
        expect(!build->supportsFormatCombination(pos, bad.data(), nbIn, 2), "rejects CHW32 at pos " + std::to_string(pos));
    }
    expect(build->configurePlugin(dynIn.data(), nbIn, dynOut.data(), 2) == 0, "configurePlugin");
    size_t const workspaceBytes = build->getWorkspaceSize(dynIn.data(), nbIn, dynOut.data(), 2);
    // an int8-row state's prefill also needs its fp32 copy; its single steps do not
    size_t const stateWorkspace = kInt8State && T > 1 && gStateWorkspaceSize ? gStateWorkspaceSize(B, H, F, Dv, 3) : 0;
    expect(gWorkspaceBound != nullptr && (!kInt8State || gStateWorkspaceSize != nullptr)
            && workspaceBytes == gWorkspaceBound(int(trtType<E>() == DataType::kFLOAT ? 0 : (trtType<E>() == DataType::kHALF ? 1 : 2))) + stateWorkspace,
        "getWorkspaceSize is rfa_scan_workspace_bound of the dtype (+ the int8 state's fp32 copy for a prefill)");
    expect(build->getAliasedInput(0) == -1, "out is not aliased");
    expect(build->getAliasedInput(1) == (inPlace && withState ? stateIndex : -1), "getAliasedInput(1)");

    // device buffers
    std::vector<void*> inPtrs;
    inPtrs.push_back(upload(toStorage<E>(p.q)));
    inPtrs.push_back(upload(toStorage<E>(p.k)));
    inPtrs.push_back(upload(toStorage<E>(p.v)));
    if (gated)
    {
        inPtrs.push_back(upload(toStorage<E>(p.g)));
    }
    std::vector<S> const s0 = stateStorage<S>(p.s0, Dv);
    if (withState)
    {
        inPtrs.push_back(upload(s0));
    }
    E* dOut = nullptr;
    S* dState = nullptr;
    CUDA_CHECK(cudaMalloc(&dOut, refOut.size() * sizeof(E)));
    if (inPlace && withState)
    {
        dState = static_cast<S*>(inPtrs[stateIndex]);
    }
    else
    {
        CUDA_CHECK(cudaMalloc(&dState, stateCount * sizeof(S)));
    }
    void* workspace = nullptr;
    if (workspaceBytes > 0)
    {
        CUDA_CHECK(cudaMalloc(&workspace, workspaceBytes));
    }
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));

    // One enqueue on poisoned outputs (and workspace): its results.
    struct Result
    {
        std::vector<E> out;
        std::vector<S> state;
        bool operator==(Result const& r) const
        {
            return std::memcmp(out.data(), r.out.data(), out.size() * sizeof(E)) == 0
                && std::memcmp(state.data(), r.state.data(), state.size() * sizeof(S)) == 0;
        }
    };
    auto runWith = [&](IPluginV3OneRuntime* rt, std::string const& label, void* scratch) {
        if (inPlace && withState)
        {
            CUDA_CHECK(cudaMemcpy(dState, s0.data(), s0.size() * sizeof(S), cudaMemcpyHostToDevice));
        }
        else
        {
            CUDA_CHECK(cudaMemset(dState, 0xFF, stateCount * sizeof(S)));
        }
        CUDA_CHECK(cudaMemset(dOut, 0xFF, refOut.size() * sizeof(E)));
        if (scratch != nullptr)
        {
            CUDA_CHECK(cudaMemset(scratch, 0xFF, workspaceBytes)); // scratch: no meaning to its contents
        }
        expect(rt->onShapeChange(in.data(), nbIn, out.data(), 2) == 0, label + ": onShapeChange");
        void* outs[2] = {dOut, dState};
        expect(rt->enqueue(in.data(), out.data(), inPtrs.data(), outs, scratch, stream) == 0, label + ": enqueue");
        CUDA_CHECK(cudaStreamSynchronize(stream));
        Result r{std::vector<E>(refOut.size()), std::vector<S>(stateCount)};
        CUDA_CHECK(cudaMemcpy(r.out.data(), dOut, r.out.size() * sizeof(E), cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(r.state.data(), dState, r.state.size() * sizeof(S), cudaMemcpyDeviceToHost));
        return r;
    };
    auto matchesReference = [&](Result const& r, std::string const& label) {
        double const eo = relErr(fromStorage(r.out), refOut);
        if constexpr (kInt8State)
        {
            // int8 rows: each entry within half its row's code step (plus fp32's error), in units of that
            double const es = int8RowsErr(r.state, refState, Dv + 1, tol);
            std::printf("  %s: out %.2e (tolerance %.0e)  state %.2f of half a code step\n", label.c_str(), eo, tol, es);
            expect(eo <= tol && es <= 1.0, label + ": matches the float64 reference");
        }
        else
        {
            double const es = relErr(fromStorage(r.state), refState);
            std::printf("  %s: out %.2e  state %.2e (tolerance %.0e, state %.0e)\n", label.c_str(), eo, es, tol, stateTol);
            expect(eo <= tol && es <= stateTol, label + ": matches the float64 reference");
        }
    };

    Result const first = runWith(runtime, "built plugin", workspace);
    matchesReference(first, "built plugin");
    bool const splits = workspace != nullptr && splitRuns(B, T, H, F, Dv, trtType<E>());
    Result unsplit = first;
    if (splits)
    {
        // an int8 state's prefill cannot run without its workspace: the unsplit run gets the state's part only
        std::string const how = kInt8State ? "with the state's workspace only" : "without a workspace";
        if constexpr (kInt8State)
        {
            IPluginV3* const stateOnly = createForEngine(creator, 1e-3f, inPlace ? 1 : 0, int64_t(stateWorkspace));
            expect(stateOnly != nullptr, "createPlugin(kRUNTIME) with the state's workspace only");
            if (stateOnly != nullptr)
            {
                unsplit = runWith(runtimeOf(stateOnly), how, workspace);
            }
            delete stateOnly;
        }
        else
        {
            unsplit = runWith(runtime, how, nullptr);
        }
        matchesReference(unsplit, how);
        // The Hopper prefill's sequence split sums the sequence in another order: with the workspace the
        // results must differ in their last bits from a run without it, or the split did not run.
        expect(!(first == unsplit), "the workspace run split the sequence (its results differ in rounding)");
    }

    IPluginV3* cloned = plugin->clone();
    expect(cloned != nullptr, "clone");
    if (cloned)
    {
        expect(runWith(runtimeOf(cloned), "clone", workspace) == first, "clone: identical to the first run");
    }

    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    expect(serialized != nullptr && serialized->nbFields == 3, "getFieldsToSerialize: eps, in_place, workspace_bytes");
    std::vector<PluginField> legacyFields; // as serialized by a plugin library that asked for no workspace
    for (int32_t i = 0; serialized != nullptr && i < serialized->nbFields; ++i)
    {
        PluginField const& f = serialized->fields[i];
        if (std::strcmp(f.name, "workspace_bytes") == 0)
        {
            expect(f.type == PluginFieldType::kINT64 && f.length == 1 && *static_cast<int64_t const*>(f.data) == int64_t(workspaceBytes),
                "serialized workspace_bytes is the workspace the plugin asked for");
        }
        else
        {
            legacyFields.push_back(f);
        }
    }
    IPluginV3* restored = creator->createPlugin("scan", serialized, TensorRTPhase::kRUNTIME);
    expect(restored != nullptr, "createPlugin(kRUNTIME) from the serialized fields");
    if (restored)
    {
        expect(runWith(runtimeOf(restored), "deserialized", workspace) == first, "deserialized: identical to the first run");
        auto* restoredBuild = static_cast<IPluginV3OneBuildV2*>(restored->getCapabilityInterface(PluginCapabilityType::kBUILD));
        expect(restoredBuild->configurePlugin(dynIn.data(), nbIn, dynOut.data(), 2) == 0
                && restoredBuild->getAliasedInput(1) == (inPlace && withState ? stateIndex : -1),
            "deserialized plugin keeps in_place");
    }
    // An engine built with a library whose plugin asked for no workspace: TensorRT reserved none, so the
    // pointer it hands over must not be written to, and the scan runs unsplit.
    PluginFieldCollection legacy{int32_t(legacyFields.size()), legacyFields.data()};
    IPluginV3* legacyPlugin = creator->createPlugin("scan", &legacy, TensorRTPhase::kRUNTIME);
    expect(legacyPlugin != nullptr, "createPlugin(kRUNTIME) without workspace_bytes");
    if (legacyPlugin != nullptr && workspace != nullptr)
    {
        if (stateWorkspace > 0) // an int8 state's prefill without its workspace: refused, nothing written
        {
            auto* rt = runtimeOf(legacyPlugin);
            CUDA_CHECK(cudaMemset(workspace, 0xFF, workspaceBytes));
            expect(rt->onShapeChange(in.data(), nbIn, out.data(), 2) == 0, "engine without workspace_bytes: onShapeChange");
            void* outs[2] = {dOut, dState};
            expect(rt->enqueue(in.data(), out.data(), inPtrs.data(), outs, workspace, stream) != 0,
                "engine without workspace_bytes: an int8 state's prefill is refused");
            CUDA_CHECK(cudaStreamSynchronize(stream));
        }
        else
        {
            Result const r = runWith(runtimeOf(legacyPlugin), "engine without workspace_bytes", workspace);
            expect(r == unsplit, "engine without workspace_bytes: identical to the unsplit run");
        }
        std::vector<unsigned char> ws(workspaceBytes);
        CUDA_CHECK(cudaMemcpy(ws.data(), workspace, workspaceBytes, cudaMemcpyDeviceToHost));
        expect(std::all_of(ws.begin(), ws.end(), [](unsigned char c) { return c == 0xFF; }),
            "engine without workspace_bytes: the workspace is left untouched");
    }
    IPluginV3* attached = runtime->attachToContext(nullptr);
    expect(attached != nullptr, "attachToContext");
    if (attached)
    {
        expect(runWith(runtimeOf(attached), "attached", workspace) == first, "attached: identical to the first run");
    }

    // shape errors are caught in onShapeChange
    auto badIn = in;
    badIn[1].dims.d[3] = F + 16;
    expect(runtime->onShapeChange(badIn.data(), nbIn, out.data(), 2) != 0, "onShapeChange rejects k of another F");
    auto badOut = out;
    badOut[1].dims.d[3] = Dv;
    expect(runtime->onShapeChange(in.data(), nbIn, badOut.data(), 2) != 0, "onShapeChange rejects a state of Dv columns");

    delete cloned;
    delete restored;
    delete legacyPlugin;
    delete attached;
    delete plugin;
    for (size_t i = 0; i < inPtrs.size(); ++i)
    {
        if (!(inPlace && withState && int32_t(i) == stateIndex))
        {
            cudaFree(inPtrs[i]);
        }
    }
    cudaFree(dOut);
    cudaFree(dState);
    cudaFree(workspace);
    cudaStreamDestroy(stream);
    std::printf("  %s\n", gFailures == failuresBefore ? "ok" : "FAILED");
}

void badFields(IPluginCreatorV3One* creator)
{
    std::printf("case createPlugin field validation\n");
    float eps = -1.f;
    int32_t one = 1, two = 2;
    double epsDouble = 1e-3;
    auto tryFields = [&](std::vector<PluginField> const& f) {
        PluginFieldCollection fc{int32_t(f.size()), f.data()};
        IPluginV3* p = creator->createPlugin("scan", &fc, TensorRTPhase::kBUILD);
        bool const made = p != nullptr;
        delete p;
        return made;
    };
    expect(!tryFields({PluginField("eps", &eps, PluginFieldType::kFLOAT32, 1)}), "rejects eps <= 0");
    expect(!tryFields({PluginField("eps", &epsDouble, PluginFieldType::kFLOAT64, 1)}), "rejects eps of the wrong type");
    expect(!tryFields({PluginField("eps", &eps, PluginFieldType::kFLOAT32, 2)}), "rejects eps of length 2");
    expect(!tryFields({PluginField("in_place", &two, PluginFieldType::kINT32, 1)}), "rejects in_place = 2");
    expect(!tryFields({PluginField("colour", &one, PluginFieldType::kINT32, 1)}), "rejects an unknown field");
    int64_t negative = -1, bytes = 1 << 20;
    expect(!tryFields({PluginField("workspace_bytes", &negative, PluginFieldType::kINT64, 1)}), "rejects workspace_bytes < 0");
    expect(!tryFields({PluginField("workspace_bytes", &one, PluginFieldType::kINT32, 1)}), "rejects workspace_bytes of the wrong type");
    expect(tryFields({PluginField("workspace_bytes", &bytes, PluginFieldType::kINT64, 1)}), "accepts workspace_bytes");
    expect(tryFields({}), "defaults when no field is given");
    char const ns[] = "rfa";
    expect(tryFields({PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 3)}), "tolerates plugin_namespace");
    // a plugin built for an unsupported feature size refuses at configure time
    IPluginV3* p = create(creator, 1e-3f, 0, TensorRTPhase::kBUILD);
    auto* build = static_cast<IPluginV3OneBuildV2*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    DynamicPluginTensorDesc d[5]{};
    Dims const q = dims({2, 5, 2, 20});
    Dims const v = dims({2, 5, 2, 32});
    for (int i = 0; i < 3; ++i)
    {
        d[i].desc = desc(i == 2 ? v : q, DataType::kHALF);
        d[i].min = d[i].max = d[i].opt = d[i].desc.dims;
    }
    d[3].desc = desc(dims({2, 2, 20, 33}), DataType::kFLOAT);
    d[3].min = d[3].max = d[3].opt = d[3].desc.dims;
    expect(build->configurePlugin(d, 4, d + 3, 2) != 0, "configurePlugin rejects F = 20");
    delete p;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr, "usage: %s path/to/librfa_trt_plugin.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    if (getCreators == nullptr || setFinder == nullptr)
    {
        std::fprintf(stderr, "the library does not export getCreators and setLoggerFinder\n");
        return 2;
    }
    gWorkspaceBound = reinterpret_cast<WorkspaceBound>(dlsym(lib, "rfa_scan_workspace_bound"));
    gStateWorkspaceSize = reinterpret_cast<StateWorkspaceSize>(dlsym(lib, "rfa_scan_state_workspace_size"));
    Logger logger;
    LoggerFinder finder(&logger);
    setFinder(&finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        InterfaceInfo const info = creators[i]->getInterfaceInfo();
        if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0)
        {
            auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
            if (std::strcmp(c->getPluginName(), "CausalGatedScan") == 0 && std::strcmp(c->getPluginNamespace(), "rfa") == 0)
            {
                creator = c;
            }
        }
    }
    expect(creator != nullptr, "getCreators lists rfa::CausalGatedScan v1 as an IPluginCreatorV3One");
    if (creator == nullptr)
    {
        return 1;
    }
    PluginFieldCollection const* names = creator->getFieldNames();
    expect(names->nbFields == 2 && std::strcmp(names->fields[0].name, "eps") == 0
            && names->fields[0].type == PluginFieldType::kFLOAT32,
        "getFieldNames");

    for (bool gated : {false, true})
    {
        for (bool withState : {false, true})
        {
            runCase<float>(creator, gated, withState, false);
            runCase<__half>(creator, gated, withState, false);
            runCase<__nv_bfloat16>(creator, gated, withState, false);
        }
    }
    runCase<float>(creator, true, true, true);
    runCase<__nv_bfloat16>(creator, false, true, true);
    // a bf16 state: decode steps (T = 1, the step kernel) and prefill (the chunked kernels), in place and not
    runCase<float, __nv_bfloat16>(creator, true, true, false, Shape{3, 1, 2, 64, 48});
    runCase<__nv_bfloat16, __nv_bfloat16>(creator, true, true, true, Shape{4, 1, 16, 128, 64});
    runCase<float, __nv_bfloat16>(creator, false, true, true);
    // fp16 activations: with bf16 ones a 4th bf16 input is taken for the gate (a reduced state needs one, config
    // C19, so it comes 5th); ungated, the sum grows and the sequence split's other order shows through rounding
    runCase<__half, __nv_bfloat16>(creator, false, true, false, Shape{1, 1600, 2, 128, 64});
    // int8 rows: decode steps (the int8 step kernel) and prefills (widened into the workspace around the chunked
    // kernels, narrowed once), in place and not; the Hopper prefill's split then takes the workspace after the
    // state's fp32 copy
    runCase<float, int8_t>(creator, true, true, false, Shape{3, 1, 2, 64, 48});
    runCase<__nv_bfloat16, int8_t>(creator, true, true, true, Shape{4, 1, 16, 128, 64});
    runCase<float, int8_t>(creator, true, true, true);
    runCase<__half, int8_t>(creator, true, true, false, Shape{2, 130, 3, 128, 64});
    runCase<__half, int8_t>(creator, true, true, false, Shape{1, 1600, 2, 128, 64}, Gate::kNear1);
    // the sizes of the Hopper prefill: on a compute capability 9.0 device with an sm_90a build, the workspace
    // lets it split these sequences (25 chunks, 2 (b, h)) into 3 segments. Ungated, or gates near 1 in fp16:
    // random gates forget a segment's start state within a chunk (the split's results would be bit-identical
    // to the unsplit ones), and near-1 gates round to exactly 1 in bf16.
    runCase<__nv_bfloat16>(creator, false, true, true, Shape{1, 1600, 2, 128, 64});
    runCase<__half>(creator, true, true, false, Shape{1, 1600, 2, 128, 64}, Gate::kNear1);
    runCase<float>(creator, true, true, false, Shape{1, 1600, 2, 128, 64});
    badFields(creator);
    expect(logger.messages[int(ILogger::Severity::kERROR)] > 0, "errors were reported through the logger finder");
    std::printf("%s: %d failures\n", gFailures ? "FAILED" : "PASSED", gFailures);
    return gFailures ? 1 : 0;
}
