// TensorRT IPluginV3 for rfa::CausalGatedScan (name CausalGatedScan, namespace rfa, version 1): the node
// that `rfa-export --scan plugin` writes. Semantics, shapes and dtypes: docs/op_contract.md.
//
// Inputs: q [B,T,H,F], k [B,T,H,F], v [B,T,H,Dv] (fp32/fp16/bf16, one type), then optionally the gate
// g [B,T,H] (same type) and/or initial_state [B,H,F,Dv+1] (fp32 or bf16; int8 rows [B,H,F,Dv+2]). Which
// optional inputs are present is read from their ranks (3 = gate, 4 = state), so it does not matter whether
// the parser passes an absent optional input or drops it. Outputs: out [B,T,H,Dv] (input type), final_state
// (initial_state's type and shape; fp32 [B,H,F,Dv+1] without one).
// Fields: eps (float32, default 1e-3), in_place (int32 0/1, default 0: alias final_state to initial_state);
// serialized with an engine also workspace_bytes (int64, default 0): the workspace the engine reserved for
// the scan, so that an engine from a library that asked for none never has one written to.
#pragma once

#include "NvInferRuntime.h"

#include <string>
#include <vector>

namespace rfa
{
namespace trt
{

struct ScanLayout
{
    int32_t gate{-1};  // input index of g, or -1
    int32_t state{-1}; // input index of initial_state, or -1
    bool valid{false};
};

// From the number of inputs and the ranks of inputs 3 and 4 (0 when absent).
ScanLayout scanLayout(int32_t nbInputs, int32_t rank3, int32_t rank4);

class CausalGatedScanPlugin final : public nvinfer1::IPluginV3,
                                    public nvinfer1::IPluginV3OneCore,
                                    public nvinfer1::IPluginV3OneBuildV2,
                                    public nvinfer1::IPluginV3OneRuntime
{
public:
    CausalGatedScanPlugin(float eps, int32_t inPlace, int64_t workspaceBytes);
    ~CausalGatedScanPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild(V2)
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t getAliasedInput(int32_t outputIndex) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    // Checks the shapes and types of a full set of descriptors; fills mLayout and mDims. 0 = ok.
    int32_t checkDescriptors(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept;

    float mEps;
    int32_t mInPlace;
    int64_t mWorkspaceBytes; // set by configurePlugin (build) or the serialized field (runtime)
    ScanLayout mLayout{};
    int64_t mB{0}, mT{0}, mH{0}, mF{0}, mDv{0};
    int32_t mStateDtype{0}; // rfa_dtype_t of initial_state / final_state (RFA_FLOAT32, RFA_BFLOAT16 or RFA_INT8)
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class CausalGatedScanPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    CausalGatedScanPluginCreator();
    ~CausalGatedScanPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Logging for the plugin library: through the ILoggerFinder TensorRT gives setLoggerFinder, else stderr.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

} // namespace trt
} // namespace rfa
