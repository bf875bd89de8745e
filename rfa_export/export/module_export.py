"""export_module: any nn.Module built from rfa_export layers -> an ONNX ModelProto with one
rfa::CausalGatedScan node per causal RFA layer, lowered as asked."""

import contextlib
import io
import logging
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import onnx
import torch

from .lowering import BASE_OPSET, apply_lowering
from .torch_translation import translation_table

IR_VERSION = 10  # onnxruntime >= 1.17 loads IR 10; onnx 1.23 would write 14, which onnxruntime <= 1.31 refuses


class ExportError(RuntimeError):
    """torch.onnx could not export the module; the message says why."""


def export_module(
    module: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Optional[Mapping[str, Any]] = None,
    lowering: str = "plugin",
    input_names: Optional[Sequence[str]] = None,
    quiet: bool = True,
    check: bool = True,
) -> onnx.ModelProto:
    """Export `module(**example_inputs)` to ONNX.

    Args:
        module: in eval mode; its forward takes the keyword arguments named in example_inputs, in that
            order, and returns a tensor or a tuple of tensors (named by output_names).
        example_inputs: forward argument name -> sample tensor, or a list of sample tensors. A dynamic axis
            needs a sample size >= 2 (size 1 would be specialised away by torch.export).
        dynamic_axes: argument name -> {axis: symbol} (a list of those for a list argument). Axes with the
            same symbol are the same dimension and keep that name in the ONNX graph.
        lowering: "plugin" (default), "onnx" or "ort"; see rfa_export.export.lowering.
        input_names: ONNX names of the flattened inputs (default: the argument names, list items as
            name.0, name.1, ...).
    Returns:
        the ModelProto (IR version 10), checked with onnx.checker full_check unless check=False.
    """
    dims: Dict[str, torch.export.Dim] = {}

    def dim_spec(name, sample, axes):
        for axis, symbol in axes.items():
            if sample.shape[axis] < 2:
                raise ExportError(f"sample input {name!r} has size {sample.shape[axis]} on dynamic axis {axis} "
                                  f"({symbol}); use a size of at least 2")
        return {axis: dims.setdefault(symbol, torch.export.Dim(_dim_name(symbol))) for axis, symbol in axes.items()}

    dynamic_shapes, flat_names = {}, []
    for name, sample in example_inputs.items():
        axes = (dynamic_axes or {}).get(name, {})
        if isinstance(sample, (list, tuple)):
            axes = axes if isinstance(axes, (list, tuple)) else [axes] * len(sample)
            dynamic_shapes[name] = [dim_spec(f"{name}[{i}]", t, a) for i, (t, a) in enumerate(zip(sample, axes))]
            flat_names += [f"{name}.{i}" for i in range(len(sample))]
        else:
            dynamic_shapes[name] = dim_spec(name, sample, axes)
            flat_names.append(name)
    if input_names is not None:
        if len(input_names) != len(flat_names):
            raise ExportError(f"{len(input_names)} input_names given for {len(flat_names)} inputs")
        flat_names = list(input_names)
    if module.training:
        raise ExportError("module is in training mode; call .eval() before exporting")

    buffer = io.StringIO()
    quiet_ctx = contextlib.redirect_stdout(buffer) if quiet else contextlib.nullcontext()
    with quiet_ctx, warnings.catch_warnings(), _quiet_loggers(quiet):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (), kwargs=dict(example_inputs), dynamo=True, opset_version=BASE_OPSET,
                dynamic_shapes=dynamic_shapes, input_names=flat_names, output_names=list(output_names),
                custom_translation_table=translation_table(), optimize=True, verbose=False, report=False,
            )
        except Exception as e:  # torch.onnx raises many types; the first line says what failed
            raise ExportError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0][:300]}") from e
    model = program.model_proto
    _rename_dims(model, {_dim_name(s): s for s in dims})
    model = apply_lowering(model, lowering)
    model.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _dim_name(symbol: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in symbol)


def _rename_dims(model: onnx.ModelProto, renames: Dict[str, str]) -> None:
    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


@contextlib.contextmanager
def _quiet_loggers(quiet: bool):
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
