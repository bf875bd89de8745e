"""onnxruntime backend: runs OUT_DIR/model.onnx; the state layout comes from the model's metadata.

CPU: the state is a list of numpy arrays. CUDA: the state is a list of OrtValues in device memory, bound with
IO binding, so nothing but the tokens (in) and the logits (out) crosses to the host per step. A state passed
to `run` is donated: its buffers are reused for a later output, so steady decoding ping-pongs between two
buffer sets without allocating. Optionally (`cuda_graph=True`) single-token steps of a fixed batch size are
captured as CUDA graphs and replayed.
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..format.config import STATE_ONNX_TYPES
from ..format.export_dir import open_export
from .backend import DecoderBackend, InputError

_NUMPY = {"float32": np.float32, "int64": np.int64, "int8": np.int8}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(bfloat16)": "bfloat16", "tensor(int8)": "int8"}


def storage_dtype(name: str):
    """The numpy dtype a state of this dtype is kept in on the CPU (bfloat16 from ml_dtypes, which onnx brings)."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return _NUMPY[name]


def run_host_bound(session, feeds: Dict[str, np.ndarray], specs: Sequence, state: Sequence[np.ndarray]):
    """One CPU run with a reduced-precision state -> (logits, new states): onnxruntime's Python API has no numpy
    bfloat16, so the state arrays are bound by address with their ONNX element type (int8 rows the same way,
    for one path). specs: the states' StateSpecs."""
    io = session.io_binding()
    for name, array in feeds.items():
        io.bind_cpu_input(name, np.ascontiguousarray(array))
    io.bind_output("logits", "cpu")
    inputs = [np.ascontiguousarray(value) for value in state]  # alive until the run: bound by address
    outputs = [np.empty_like(value) for value in inputs]
    for spec, value, out in zip(specs, inputs, outputs):
        kind = STATE_ONNX_TYPES[spec.dtype]
        io.bind_input(spec.input, "cpu", 0, kind, list(value.shape), value.ctypes.data)
        io.bind_output(spec.output, "cpu", 0, kind, list(out.shape), out.ctypes.data)
    session.run_with_iobinding(io)
    return io.get_outputs()[0].numpy(), outputs


def session_settings(ort, device: str, device_id: int, threads: Optional[int], dtype: str):
    """(SessionOptions, providers) for an export of activation `dtype` on `device`; refuses what cannot run there
    before a session is built (onnxruntime would fail later with a kernel-not-found message)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if dtype == "bf16" and device == "cpu":
        raise ValueError("a bf16 export does not run on onnxruntime's CPU provider (it has no bfloat16 kernels for "
                         "basic ops such as Mul): run it on CUDA or TensorRT, or export with --dtype fp16 or fp32")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if device == "cpu":
        return options, ["CPUExecutionProvider"]
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    # use_tf32=0: fp32 MatMuls in fp32, as the export promises (TF32 would cost ~5e-4 relative)
    return options, [("CUDAExecutionProvider", {"device_id": device_id, "use_tf32": 0}), "CPUExecutionProvider"]


class OnnxRuntimeBackend(DecoderBackend):
    name = "onnxruntime"

    def __init__(self, out_dir: Union[str, Path], device: str = "cpu", threads: Optional[int] = None,
                 device_id: int = 0, cuda_graph: bool = False):
        import onnxruntime as ort

        if not isinstance(cuda_graph, bool) or (cuda_graph and device != "cuda"):
            raise InputError(f"cuda_graph=True needs device cuda (got cuda_graph={cuda_graph!r} on {device})")
        export = open_export(out_dir)  # metadata checked against the model and its content digest
        self.spec = export.meta
        self.tokenizer_path = export.tokenizer_path
        model_path = export.model_path
        self._ort = ort
        self.device, self.device_id = device, device_id
        self._options, self._providers = session_settings(ort, device, device_id, threads, self.spec.dtype)
        self.model_path = model_path
        self.session = ort.InferenceSession(str(model_path), self._options, providers=self._providers)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._state_outputs = [s.output for s in self.spec.state]
        self._reduced_state = any(s.dtype != "float32" for s in self.spec.state)
        if self._reduced_state and device == "cuda":
            raise ValueError(f"the onnxruntime backend takes a {self.spec.state[0].dtype} state on the CPU only; "
                             "on CUDA use the torch backend or export with state_dtype float32")
        self._free: Dict[Tuple[int, ...], List] = {}  # device buffers ready for reuse, by shape
        self._device_ops = None
        self._graphs: Dict[int, "_GraphedStep"] = {}
        self.cuda_graph = cuda_graph

    # --- feeds ----------------------------------------------------------------------------------------

    def _host_feeds(self, input_ids, attention_mask, position_ids) -> Dict[str, np.ndarray]:
        B = input_ids.shape[0]
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
        for spec in self.spec.extra_state:
            feeds[spec.input] = np.zeros([B, *spec.shape[1:]], dtype=_NUMPY[spec.dtype])
        return feeds

    def _run(self, input_ids, attention_mask, position_ids, state):
        feeds = self._host_feeds(input_ids, attention_mask, position_ids)
        if self.device == "cpu":
            if self._reduced_state:
                return self._run_host_bound(feeds, state)
            for spec, value in zip(self.spec.state, state):
                feeds[spec.input] = value
            outs = self.session.run(["logits"] + self._state_outputs, feeds)
            return outs[0], list(outs[1:])
        if self.cuda_graph and input_ids.shape[1] == 1:
            graph = self._graphs.get(input_ids.shape[0])
            if graph is None:
                graph = self._graphs[input_ids.shape[0]] = _GraphedStep(self, input_ids.shape[0])
            return graph.run(feeds, state)
        return self._run_bound(self.session, feeds, state)

    def _run_bound(self, session, feeds, state):
        io = session.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for spec, value in zip(self.spec.state, state):
            io.bind_ortvalue_input(spec.input, value)
        io.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        outputs = [self._take_buffer(v.shape()) for v in state]
        for name, buf in zip(self._state_outputs, outputs):
            io.bind_ortvalue_output(name, buf)
        session.run_with_iobinding(io)
        logits = io.get_outputs()[0].numpy()
        for value in state:  # donated: reusable for the next step's output
            self._free.setdefault(tuple(value.shape()), []).append(value)
        return logits, outputs

    def _run_host_bound(self, feeds, state):
        return run_host_bound(self.session, feeds, self.spec.state, state)

    def _take_buffer(self, shape):
        pool = self._free.get(tuple(shape))
        if pool:
            return pool.pop()
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cuda", self.device_id)

    # --- state ----------------------------------------------------------------------------------------

    def to_host(self, state) -> List[np.ndarray]:
        if self.device == "cpu":
            return [np.asarray(s).astype(np.float32, copy=False) for s in state]
        return [s.numpy() for s in state]

    def from_host(self, arrays: Sequence[np.ndarray]):
        if self.device == "cpu":
            return [np.ascontiguousarray(a, dtype=storage_dtype(s.dtype)) for a, s in zip(arrays, self.spec.state)]
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        return [self._ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id) for a in arrays]

    def state_shapes(self, state):
        if self.device == "cpu":
            return super().state_shapes(state)
        try:
            return [(tuple(v.shape()), _ORT_TYPES.get(v.data_type(), v.data_type())) for v in state]
        except (AttributeError, TypeError):
            raise InputError(f"a CUDA state is a list of OrtValues, got {type(state).__name__}") from None

    def select(self, state, indices):
        if self.device == "cpu":
            return super().select(state, indices)
        return self._ops().gather(state, np.asarray(indices, dtype=np.int64))

    def concat(self, states):
        if self.device == "cpu":
            return super().concat(states)
        return self._ops().concat(states)

    def _ops(self) -> "_DeviceStateOps":
        if self._device_ops is None:
            self._device_ops = _DeviceStateOps(self)
        return self._device_ops


class _DeviceStateOps:
    """Row gather and batch concat of device-resident states, by tiny onnxruntime graphs on the same
    device (no host round trip)."""

    def __init__(self, backend: OnnxRuntimeBackend):
        self.backend = backend
        self._sessions = {}

    def _session(self, key, build):
        if key not in self._sessions:
            import onnx

            model = build()
            model.ir_version = 10
            onnx.checker.check_model(model)
            b = self.backend
            self._sessions[key] = b._ort.InferenceSession(model.SerializeToString(), b._options, providers=b._providers)
        return self._sessions[key]

    def _state_info(self, n_parts=1):
        from onnx import TensorProto, helper

        return [helper.make_tensor_value_info(f"s{i}_{p}", TensorProto.FLOAT, [f"b{p}", "h", "f", "d"])
                for p in range(n_parts) for i in range(len(self.backend.spec.state))]

    def gather(self, state, indices):
        from onnx import TensorProto, helper

        n = len(state)

        def build():
            nodes = [helper.make_node("Gather", [f"s{i}_0", "idx"], [f"o{i}"], axis=0) for i in range(n)]
            graph = helper.make_graph(nodes, "gather_rows", self._state_info() + [helper.make_tensor_value_info("idx", TensorProto.INT64, [None])],
                                      [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, ["n", "h", "f", "d"]) for i in range(n)])
            return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])

        return self._run(self._session(("gather", n), build), {f"s{i}_0": v for i, v in enumerate(state)}, {"idx": indices}, n)

    def concat(self, states):
        from onnx import TensorProto, helper

        n, parts = len(states[0]), len(states)

        def build():
            nodes = [helper.make_node("Concat", [f"s{i}_{p}" for p in range(parts)], [f"o{i}"], axis=0) for i in range(n)]
            graph = helper.make_graph(nodes, "concat_rows", self._state_info(parts),
                                      [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, ["n", "h", "f", "d"]) for i in range(n)])
            return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])

        feeds = {f"s{i}_{p}": v for p, st in enumerate(states) for i, v in enumerate(st)}
        return self._run(self._session(("concat", n, parts), build), feeds, {}, n)

    def _run(self, session, device_feeds, host_feeds, n):
        io = session.io_binding()
        for name, value in device_feeds.items():
            io.bind_ortvalue_input(name, value)
        for name, array in host_feeds.items():
            io.bind_cpu_input(name, array)
        for i in range(n):
            io.bind_output(f"o{i}", "cuda", self.backend.device_id)
        session.run_with_iobinding(io)
        return list(io.get_outputs())


class _GraphedStep:
    """Single-token steps of batch B as two captured CUDA graphs (past A -> present B, and B -> A), replayed
    with the tokens copied into fixed device buffers. Needs every node of the model on the CUDA EP."""

    def __init__(self, backend: OnnxRuntimeBackend, batch: int):
        ort = backend._ort
        self.backend = backend
        options = [("CUDAExecutionProvider", {"device_id": backend.device_id, "enable_cuda_graph": "1", "use_tf32": 0})]
        try:
            self.session = ort.InferenceSession(str(backend.model_path), backend._options, providers=options)
        except Exception as e:  # onnxruntime says why (control flow, nodes on the CPU, ...)
            raise RuntimeError(f"onnxruntime cannot capture this model's step as a CUDA graph "
                               f"(lowering {backend.spec.lowering!r}): {str(e).strip().splitlines()[0]}") from None
        spec = backend.spec
        shape_of = lambda s: [batch, *s.shape[1:]]  # noqa: E731
        dev = lambda a: ort.OrtValue.ortvalue_from_numpy(a, "cuda", backend.device_id)  # noqa: E731
        self.sets = [[dev(np.zeros(shape_of(s), np.float32)) for s in spec.state] for _ in range(2)]
        self.host_inputs = {}
        self.logits = dev(np.zeros((batch, 1, spec.vocab_size), np.float32))
        self.bindings, self.run_options = [], []
        self.current = 0  # which set holds the live state
        self._inputs = None

    def _bind(self, feeds):
        ort = self.backend._ort
        self._inputs = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", self.backend.device_id) for k, v in feeds.items()}
        for graph_id in (0, 1):
            io = self.session.io_binding()
            for name, value in self._inputs.items():
                io.bind_ortvalue_input(name, value)
            for spec, value in zip(self.backend.spec.state, self.sets[graph_id]):
                io.bind_ortvalue_input(spec.input, value)
            for name, value in zip(self.backend._state_outputs, self.sets[1 - graph_id]):
                io.bind_ortvalue_output(name, value)
            io.bind_ortvalue_output("logits", self.logits)
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(graph_id + 1))
            self.bindings.append(io)
            self.run_options.append(ro)

    def run(self, feeds, state):
        if self._inputs is None:
            self._bind(feeds)
        else:
            for name, array in feeds.items():
                self._inputs[name].update_inplace(array)
        live = self.sets[self.current]
        if state is not live:  # entering graph mode from a prefill or a select: one copy into the live set
            for dst, src in zip(live, state):
                dst.update_inplace(src.numpy())
        g = self.current
        self.session.run_with_iobinding(self.bindings[g], self.run_options[g])
        self.current = 1 - g
        return self.logits.numpy(), self.sets[self.current]
