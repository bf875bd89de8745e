"""The TensorRT plugin's declared interface (CausalGatedScan_PluginConfig.yaml and README.md beside it) against
what the plugin source does and what the op contract and the exporter's op identity say."""

import re
from pathlib import Path

import pytest
import yaml

from rfa_export.format import scan_op
from rfa_export.format.config import DEFAULT_EPS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "trt" / "causalGatedScanPlugin"
CONTRACT = (ROOT / "docs" / "op_contract.md").read_text()
ACTIVATION_TYPES = {"float32", "float16", "bfloat16"}
STATE_TYPES = {"float32", "bfloat16", "int8"}
FIELD_TYPES = {"kFLOAT32": "float32", "kINT32": "int32", "kINT64": "int64"}


@pytest.fixture(scope="module")
def source():
    return (PLUGIN / "causalGatedScanPlugin.cpp").read_text()


@pytest.fixture(scope="module")
def config():
    text = (PLUGIN / "CausalGatedScan_PluginConfig.yaml").read_text()
    data = yaml.safe_load(text)
    assert set(data) == {"name", "namespace", "interface", "versions"}
    return data


def _constant(source, name):
    return re.search(rf'constexpr \w+(?: const\*)? {name} = "?([^";]+)"?;', source).group(1)


def _fields(source, function_head):
    """(name, TensorRT field type) of each emplace_back in the body that follows function_head."""
    body = source[source.index(function_head):]
    body = body[:body.index("\n}\n")]
    return [(n, FIELD_TYPES[t]) for n, t in re.findall(r'emplace_back\("(\w+)", [^,]+, PluginFieldType::(\w+), 1\)', body)]


def test_identity_matches_the_source_and_the_exporter(source, config):
    assert config["name"] == _constant(source, "kName") == scan_op.OP_TYPE
    assert config["namespace"] == _constant(source, "kNamespace") == scan_op.PLUGIN_ATTRIBUTES["plugin_namespace"]
    assert list(config["versions"]) == [_constant(source, "kVersion")] == [scan_op.PLUGIN_ATTRIBUTES["plugin_version"]]
    assert config["interface"] == "IPluginV3" and "public nvinfer1::IPluginV3," in (PLUGIN / "causalGatedScanPlugin.h").read_text()
    assert float(_constant(source, "kDefaultEps").rstrip("f")) == DEFAULT_EPS


def test_inputs_outputs_and_ranks_are_the_contracts(config):
    v1 = config["versions"]["1"]
    assert v1["inputs"] == scan_op.INPUTS and v1["outputs"] == scan_op.OUTPUTS
    for name in v1["inputs"]:  # the contract's input table: "| # | name | shape | ..."
        shape = re.search(rf"^\| \d \| `{name}` \| `(\[[^]]*\])`", CONTRACT, re.M).group(1)
        assert v1["input_dims"][name] == len(shape.split(",")), name
    assert set(v1["output_dims"]) == set(v1["outputs"])
    for constraint in v1["input_dim_constraints"]:
        for operand in re.findall(r"(\w+)_(\d)", constraint):
            assert operand[0] in v1["inputs"] and int(operand[1]) < v1["input_dims"][operand[0]], constraint


def test_attributes_are_the_creators_fields(source, config):
    v1 = config["versions"]["1"]
    creator = _fields(source, "CausalGatedScanPluginCreator::CausalGatedScanPluginCreator()")
    assert [(a, v1["attribute_types"][a]) for a in v1["attributes"]] == creator
    assert all(v1["attribute_length"][a] == 1 for a in v1["attributes"]) and v1["attributes_required"] == []
    assert v1["attribute_options"]["in_place"] == [0, 1]
    assert "in_place must be 0 or 1" in source and "eps must be finite and > 0" in source
    assert v1["attribute_options"]["eps"] == {"min": "0", "max": "pinf"}


def test_readme_documents_every_serialized_field(source):
    readme = (PLUGIN / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", readme, re.M))
    serialized = _fields(source, "CausalGatedScanPlugin::getFieldsToSerialize()")
    assert [n for n, _ in serialized] == ["eps", "in_place", "workspace_bytes"]
    assert {name: kind for kind, name in documented.items()} == dict(serialized)


def test_configs_follow_the_dtype_rule(config):
    v1 = config["versions"]["1"]
    assert (v1["abs_tol"], v1["rel_tol"]) == (1e-5, 1e-5)
    assert re.search(r"any float32 backend \| 1e-5 \(kernels\)", CONTRACT)
    states = set()
    for name, case in v1["configs"].items():
        inputs, outputs = case["input_types"], case["output_types"]
        assert set(inputs) == set(v1["inputs"]) and set(outputs) == set(v1["outputs"]), name
        activation = {inputs[n] for n in ("q_feat", "k_feat", "v", "g")}
        assert len(activation) == 1 and activation <= ACTIVATION_TYPES, name
        assert outputs["out"] == inputs["q_feat"] and outputs["final_state"] == inputs["initial_state"], name
        states.add(inputs["initial_state"])
    assert states == STATE_TYPES
