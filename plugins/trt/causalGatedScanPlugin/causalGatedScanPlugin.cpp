#include "causalGatedScanPlugin.h"

#include "causal_gated_scan.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>

using namespace nvinfer1;

namespace rfa
{
namespace trt
{
namespace
{

constexpr char const* kName = "CausalGatedScan";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "rfa";
constexpr float kDefaultEps = 1e-3f;

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;

int rfaDtype(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return RFA_FLOAT32;
    case DataType::kHALF: return RFA_FLOAT16;
    case DataType::kBF16: return RFA_BFLOAT16;
    default: return -1;
    }
}

// The state's storage types (docs/op_contract.md, "State dtype").
bool isStateType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kBF16 || t == DataType::kINT8;
}

int rfaStateDtype(DataType t)
{
    return t == DataType::kINT8 ? RFA_INT8 : rfaDtype(t);
}

// Columns of a state row: [S | z], and int8 rows their exponent besides.
int64_t stateColumns(int64_t Dv, DataType t)
{
    return Dv + (t == DataType::kINT8 ? 2 : 1);
}

// The workspace for the largest shapes the engine may see: the scan's (a bound that depends only on the
// dtype) and, for an int8-row state and sequences of more than one step, its fp32 copy during a prefill.
size_t workspaceFor(DynamicPluginTensorDesc const* in, int32_t nbInputs, ScanLayout const& l)
{
    int const dtype = rfaDtype(in[0].desc.type);
    size_t bytes = dtype >= 0 ? rfa_scan_workspace_bound(dtype) : 0;
    if (l.state >= 0 && l.state < nbInputs && in[l.state].desc.type == DataType::kINT8 && in[0].max.d[1] > 1)
    {
        Dims const& s = in[l.state].max; // [B, H, F, Dv + 2]
        bytes += rfa_scan_state_workspace_size(int(s.d[0]), int(s.d[1]), int(s.d[2]), int(s.d[3] - 2), RFA_INT8);
    }
    return bytes;
}

bool sameDims(Dims const& a, std::initializer_list<int64_t> b)
{
    if (a.nbDims != int32_t(b.size()))
    {
        return false;
    }
    int32_t i = 0;
    for (int64_t x : b)
    {
        if (a.d[i++] != x)
        {
            return false;
        }
    }
    return true;
}

int32_t fail(std::string const& message) noexcept
{
    logMessage(ILogger::Severity::kERROR, std::string(kName) + ": " + message);
    return -1;
}

} // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "[rfa plugin] %s\n", message.c_str());
        }
    }
    catch (...)
    {
    }
}

ScanLayout scanLayout(int32_t nbInputs, int32_t rank3, int32_t rank4)
{
    ScanLayout l;
    if (nbInputs == 3)
    {
        l.valid = true;
    }
    else if (nbInputs == 4)
    {
        l.valid = rank3 == 3 || rank3 == 4;
        (rank3 == 3 ? l.gate : l.state) = 3;
    }
    else if (nbInputs == 5)
    {
        l.valid = rank3 == 3 && rank4 == 4;
        l.gate = 3;
        l.state = 4;
    }
    return l;
}

CausalGatedScanPlugin::CausalGatedScanPlugin(float eps, int32_t inPlace, int64_t workspaceBytes)
    : mEps(eps)
    , mInPlace(inPlace)
    , mWorkspaceBytes(workspaceBytes)
{
}

IPluginCapability* CausalGatedScanPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuildV2*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* CausalGatedScanPlugin::clone() noexcept
{
    try
    {
        auto* copy = new CausalGatedScanPlugin(mEps, mInPlace, mWorkspaceBytes);
        copy->mLayout = mLayout;
        copy->mB = mB;
        copy->mT = mT;
        copy->mH = mH;
        copy->mF = mF;
        copy->mDv = mDv;
        copy->mStateDtype = mStateDtype;
        return copy;
    }
    catch (std::exception const& e)
    {
        fail(std::string("clone: ") + e.what());
        return nullptr;
    }
}

char const* CausalGatedScanPlugin::getPluginName() const noexcept
{
    return kName;
}

char const* CausalGatedScanPlugin::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* CausalGatedScanPlugin::getPluginNamespace() const noexcept
{
    return kNamespace;
}

int32_t CausalGatedScanPlugin::getNbOutputs() const noexcept
{
    return 2;
}

int32_t CausalGatedScanPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 2 || nbInputs < 3 || rfaDtype(inputTypes[0]) < 0)
    {
        return fail("getOutputDataTypes: expects 3 to 5 inputs of fp32, fp16 or bf16 and 2 outputs");
    }
    outputTypes[0] = inputTypes[0];
    // final_state keeps initial_state's storage type (fp32, bf16 or int8 rows); fp32 without one. Only types
    // are known here: a 4th input typed unlike q is the state, one typed like q the gate (a bf16 state with
    // bf16 activations has a gate too: a reduced state needs one, config C19, so it comes as the 5th input).
    DataType const last = inputTypes[nbInputs - 1];
    bool const hasState = nbInputs == 5 || (nbInputs == 4 && last != inputTypes[0]);
    outputTypes[1] = hasState && isStateType(last) ? last : DataType::kFLOAT;
    return 0;
}

int32_t CausalGatedScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    ScanLayout const l
        = scanLayout(nbInputs, nbInputs > 3 ? inputs[3].nbDims : 0, nbInputs > 4 ? inputs[4].nbDims : 0);
    if (!l.valid || nbOutputs != 2 || inputs[0].nbDims != 4 || inputs[2].nbDims != 4)
    {
        return fail("getOutputShapes: inputs must be q, k, v [B,T,H,*], then optionally g [B,T,H] and state [B,H,F,Dv+1] "
                    "(Dv+2 for int8 rows)");
    }
    DimsExprs const& q = inputs[0];
    DimsExprs const& v = inputs[2];
    outputs[0].nbDims = 4;
    outputs[0].d[0] = q.d[0];
    outputs[0].d[1] = q.d[1];
    outputs[0].d[2] = q.d[2];
    outputs[0].d[3] = v.d[3];
    if (l.state >= 0)
    {
        outputs[1] = inputs[l.state]; // the state passes through with its own shape
    }
    else
    {
        outputs[1].nbDims = 4;
        outputs[1].d[0] = q.d[0];
        outputs[1].d[1] = q.d[2];
        outputs[1].d[2] = q.d[3];
        outputs[1].d[3] = exprBuilder.operation(DimensionOperation::kSUM, *v.d[3], *exprBuilder.constant(1));
    }
    return 0;
}

bool CausalGatedScanPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbOutputs != 2 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    ScanLayout const l = scanLayout(nbInputs, nbInputs > 3 ? inOut[3].desc.dims.nbDims : 0,
        nbInputs > 4 ? inOut[4].desc.dims.nbDims : 0);
    PluginTensorDesc const& d = inOut[pos].desc;
    if (!l.valid || d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == l.state)
    {
        return isStateType(d.type);
    }
    if (pos == nbInputs + 1) // final_state: initial_state's type, fp32 without one
    {
        return d.type == (l.state >= 0 ? inOut[l.state].desc.type : DataType::kFLOAT);
    }
    if (pos == 0)
    {
        return rfaDtype(d.type) >= 0;
    }
    return d.type == inOut[0].desc.type; // k, v, g and out share q's type
}

int32_t CausalGatedScanPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        ScanLayout const l = scanLayout(
            nbInputs, nbInputs > 3 ? in[3].desc.dims.nbDims : 0, nbInputs > 4 ? in[4].desc.dims.nbDims : 0);
        if (!l.valid || nbOutputs != 2)
        {
            return fail("configurePlugin: unexpected number or ranks of inputs/outputs");
        }
        mLayout = l;
        int const dtype = rfaDtype(in[0].desc.type);
        mWorkspaceBytes = int64_t(workspaceFor(in, nbInputs, l)); // what getWorkspaceSize asks for
        int64_t const F = in[0].desc.dims.d[3];
        int64_t const Dv = in[2].desc.dims.d[3];
        // F and Dv are static in every model rfa-export writes; check them as soon as they are known.
        if (F >= 0 && Dv >= 0)
        {
            int const status = rfa_scan_check(1, 1, 1, int(F), int(Dv), dtype);
            if (status != RFA_OK)
            {
                return fail(std::string("configurePlugin: ") + rfa_status_string(status));
            }
        }
        (void) out;
        return 0;
    }
    catch (std::exception const& e)
    {
        return fail(std::string("configurePlugin: ") + e.what());
    }
}

// The scan's workspace: optional for the Hopper prefill's sequence split (a bound that depends only on the
// dtype), needed by an int8-row state's prefill (its fp32 copy). enqueue is not told the workspace's size: it
// passes the one configurePlugin recorded, which is serialized with the engine (workspace_bytes), so that an
// engine keeps the size it was built with.
size_t CausalGatedScanPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs < 3)
    {
        return 0;
    }
    ScanLayout const l = scanLayout(
        nbInputs, nbInputs > 3 ? inputs[3].desc.dims.nbDims : 0, nbInputs > 4 ? inputs[4].desc.dims.nbDims : 0);
    return workspaceFor(inputs, nbInputs, l);
}

int32_t CausalGatedScanPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return (mInPlace != 0 && outputIndex == 1 && mLayout.state >= 0) ? mLayout.state : -1;
}

int32_t CausalGatedScanPlugin::checkDescriptors(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    ScanLayout const l
        = scanLayout(nbInputs, nbInputs > 3 ? in[3].dims.nbDims : 0, nbInputs > 4 ? in[4].dims.nbDims : 0);
    if (!l.valid || nbOutputs != 2 || in[0].dims.nbDims != 4 || in[2].dims.nbDims != 4)
    {
        return fail("inputs must be q, k, v [B,T,H,*], then optionally g [B,T,H] and state [B,H,F,Dv+1] (Dv+2 for int8 rows)");
    }
    int64_t const B = in[0].dims.d[0], T = in[0].dims.d[1], H = in[0].dims.d[2], F = in[0].dims.d[3];
    int64_t const Dv = in[2].dims.d[3];
    if (!sameDims(in[1].dims, {B, T, H, F}) || !sameDims(in[2].dims, {B, T, H, Dv}))
    {
        return fail("k must match q [B,T,H,F] and v must be [B,T,H,Dv]");
    }
    if (l.gate >= 0 && !sameDims(in[l.gate].dims, {B, T, H}))
    {
        return fail("g must be [B,T,H]");
    }
    DataType const stateType = l.state >= 0 ? in[l.state].type : DataType::kFLOAT;
    int64_t const columns = stateColumns(Dv, stateType);
    if (l.state >= 0 && !sameDims(in[l.state].dims, {B, H, F, columns}))
    {
        return fail("initial_state must be [B,H,F,Dv+1] (Dv+2 for int8 rows)");
    }
    if (!sameDims(out[0].dims, {B, T, H, Dv}) || !sameDims(out[1].dims, {B, H, F, columns}))
    {
        return fail("outputs must be out [B,T,H,Dv] and final_state [B,H,F,Dv+1] (Dv+2 for int8 rows)");
    }
    int const dtype = rfaDtype(in[0].type);
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        bool const ok = i == l.state ? isStateType(in[i].type) : in[i].type == in[0].type;
        if (!ok)
        {
            return fail("input " + std::to_string(i) + " has the wrong data type");
        }
    }
    if (out[0].type != in[0].type || out[1].type != stateType)
    {
        return fail("outputs must be of q's type and of initial_state's type (fp32 without one)");
    }
    int const status = rfa_scan_check(int(B), int(T), int(H), int(F), int(Dv), dtype);
    if (status != RFA_OK)
    {
        return fail(rfa_status_string(status));
    }
    mLayout = l;
    mStateDtype = rfaStateDtype(stateType);
    mB = B;
    mT = T;
    mH = H;
    mF = F;
    mDv = Dv;
    return 0;
}

int32_t CausalGatedScanPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return checkDescriptors(in, nbInputs, out, nbOutputs);
}

int32_t CausalGatedScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    // Shapes were checked in onShapeChange; here only the call is assembled (no allocation, no sync).
    (void) outputDesc;
    rfa_scan_args_t args{};
    args.B = int(mB);
    args.T = int(mT);
    args.H = int(mH);
    args.F = int(mF);
    args.Dv = int(mDv);
    args.dtype = static_cast<rfa_dtype_t>(rfaDtype(inputDesc[0].type));
    args.eps = mEps;
    args.q = inputs[0];
    args.k = inputs[1];
    args.v = inputs[2];
    args.g = mLayout.gate >= 0 ? inputs[mLayout.gate] : nullptr;
    args.initial_state = mLayout.state >= 0 ? inputs[mLayout.state] : nullptr;
    args.out = outputs[0];
    args.final_state = outputs[1];
    args.state_dtype = static_cast<rfa_dtype_t>(mStateDtype);
    size_t const workspaceBytes = workspace != nullptr ? size_t(mWorkspaceBytes) : 0;
    int const status = rfa_causal_gated_scan(&args, workspace, workspaceBytes, stream);
    return status == RFA_OK ? 0 : fail(std::string("enqueue: ") + rfa_status_string(status));
}

IPluginV3* CausalGatedScanPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* CausalGatedScanPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFields.clear();
        mFields.emplace_back("eps", &mEps, PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("in_place", &mInPlace, PluginFieldType::kINT32, 1);
        mFields.emplace_back("workspace_bytes", &mWorkspaceBytes, PluginFieldType::kINT64, 1);
        mFieldCollection.nbFields = int32_t(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        fail(std::string("getFieldsToSerialize: ") + e.what());
        return nullptr;
    }
}

CausalGatedScanPluginCreator::CausalGatedScanPluginCreator()
{
    mFieldNames.emplace_back("eps", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldNames.emplace_back("in_place", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = int32_t(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* CausalGatedScanPluginCreator::getPluginName() const noexcept
{
    return kName;
}

char const* CausalGatedScanPluginCreator::getPluginVersion() const noexcept
{
    return kVersion;
}

char const* CausalGatedScanPluginCreator::getPluginNamespace() const noexcept
{
    return kNamespace;
}

PluginFieldCollection const* CausalGatedScanPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* CausalGatedScanPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        (void) name;
        (void) phase;
        float eps = kDefaultEps;
        int32_t inPlace = 0;
        int64_t workspaceBytes = 0; // absent: an engine built before the plugin had a workspace, or a new build
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr)
            {
                fail("createPlugin: a field has no name");
                return nullptr;
            }
            std::string const field(f.name);
            if (field == "eps")
            {
                if (f.type != PluginFieldType::kFLOAT32 || f.length != 1 || f.data == nullptr)
                {
                    fail("createPlugin: field eps must be one float32");
                    return nullptr;
                }
                eps = *static_cast<float const*>(f.data);
                if (!std::isfinite(eps) || eps <= 0.f)
                {
                    fail("createPlugin: eps must be finite and > 0");
                    return nullptr;
                }
            }
            else if (field == "in_place")
            {
                if (f.type != PluginFieldType::kINT32 || f.length != 1 || f.data == nullptr)
                {
                    fail("createPlugin: field in_place must be one int32");
                    return nullptr;
                }
                inPlace = *static_cast<int32_t const*>(f.data);
                if (inPlace != 0 && inPlace != 1)
                {
                    fail("createPlugin: in_place must be 0 or 1");
                    return nullptr;
                }
            }
            else if (field == "workspace_bytes")
            {
                if (f.type != PluginFieldType::kINT64 || f.length != 1 || f.data == nullptr)
                {
                    fail("createPlugin: field workspace_bytes must be one int64");
                    return nullptr;
                }
                workspaceBytes = *static_cast<int64_t const*>(f.data);
                if (workspaceBytes < 0)
                {
                    fail("createPlugin: workspace_bytes must be >= 0");
                    return nullptr;
                }
            }
            else if (field == "plugin_namespace" || field == "plugin_version")
            {
                continue; // ONNX attributes used for the plugin lookup itself
            }
            else
            {
                fail("createPlugin: unknown field " + field);
                return nullptr;
            }
        }
        return new CausalGatedScanPlugin(eps, inPlace, workspaceBytes);
    }
    catch (std::exception const& e)
    {
        fail(std::string("createPlugin: ") + e.what());
        return nullptr;
    }
}

} // namespace trt
} // namespace rfa
