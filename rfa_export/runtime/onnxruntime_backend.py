"""onnxruntime backend: runs OUT_DIR/model.onnx; the state layout comes from the model's metadata."""

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from ..export.metadata import MODEL_FILE, MetadataError, metadata_from_model, read_export_dir
from .backend import DecoderBackend

_NUMPY = {"float32": np.float32, "int64": np.int64}


class OnnxRuntimeBackend(DecoderBackend):
    """CPU (default) or CUDA. State: numpy arrays on the host."""

    name = "onnxruntime"

    def __init__(self, out_dir: Union[str, Path], device: str = "cpu", threads: Optional[int] = None):
        import onnx
        import onnxruntime as ort

        out_dir = Path(out_dir)
        self.spec = read_export_dir(out_dir)
        model_path = out_dir / MODEL_FILE
        if not model_path.is_file():
            raise MetadataError(f"{out_dir}: no {MODEL_FILE}")
        embedded = metadata_from_model(onnx.load(str(model_path), load_external_data=False), str(model_path))
        if embedded.state != self.spec.state:
            raise MetadataError(f"{out_dir}: {MODEL_FILE} and its metadata file disagree about the state tensors")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.device = device
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._outputs = ["logits"] + [s.output for s in self.spec.state] + [s.output for s in self.spec.extra_state]

    def run(self, input_ids, attention_mask, position_ids, state):
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.ascontiguousarray(position_ids, dtype=np.int64)
        for spec, value in zip(self.spec.state, state):
            feeds[spec.input] = value
        for spec in self.spec.extra_state:
            feeds[spec.input] = np.zeros([input_ids.shape[0], *spec.shape[1:]], dtype=_NUMPY[spec.dtype])
        outs = self.session.run(self._outputs, feeds)
        return outs[0], list(outs[1 : 1 + len(self.spec.state)])

    def to_host(self, state) -> List[np.ndarray]:
        return [np.asarray(s) for s in state]

    def from_host(self, arrays: Sequence[np.ndarray]):
        return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
