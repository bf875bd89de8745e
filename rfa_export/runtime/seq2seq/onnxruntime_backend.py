"""An encoder-decoder export (encoder_model.onnx + decoder_model.onnx) on onnxruntime."""

from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..onnxruntime_backend import run_host_bound, session_settings, storage_dtype
from .backend import Seq2SeqBackend


class OnnxRuntimeSeq2SeqBackend(Seq2SeqBackend):
    """encoder_model.onnx + decoder_model.onnx on onnxruntime. CPU: numpy states. CUDA: states stay on the
    device as OrtValues (IO binding); only tokens go in and logits come out."""

    name = "onnxruntime"

    def __init__(self, out_dir: Union[str, Path], device: str = "cpu", threads: Optional[int] = None, device_id: int = 0):
        import onnxruntime as ort

        from ...format.export_dir import open_seq2seq_export

        export = open_seq2seq_export(out_dir)
        self.spec, self.tokenizer_path = export.meta, export.tokenizer_path
        self._reduced_state = any(s.dtype != "float32" for s in self.spec.state)
        if self._reduced_state and device == "cuda":
            raise ValueError(f"the onnxruntime backend takes a {self.spec.state[0].dtype} self state on the CPU only; "
                             "on CUDA use the torch backend or export with state_dtype float32")
        options, providers = session_settings(ort, device, device_id, threads, self.spec.dtype)
        self._ort, self.device, self.device_id = ort, device, device_id
        self.encoder = ort.InferenceSession(str(export.encoder_path), options, providers=providers)
        self.decoder = ort.InferenceSession(str(export.decoder_path), options, providers=providers)
        self._cross_outputs = [c.output for c in self.spec.cross_state]

    def _on_device(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self.device_id)

    def encode(self, input_ids, attention_mask):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.device == "cpu":
            return self.encoder.run(self._cross_outputs, feeds)
        io = self.encoder.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for name in self._cross_outputs:
            io.bind_output(name, "cuda", self.device_id)
        self.encoder.run_with_iobinding(io)
        return list(io.get_outputs())

    def decode(self, input_ids, attention_mask, position_ids, state, cross):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            feeds["position_ids"] = position_ids
        states = [(s.input, v) for s, v in zip(self.spec.state, state)] + \
                 [(c.input, v) for c, v in zip(self.spec.cross_state, cross)]
        outputs = ["logits"] + [s.output for s in self.spec.state]
        if self._reduced_state:
            return run_host_bound(self.decoder, {**feeds, **dict(states[len(state):])}, self.spec.state, state)
        if self.device == "cpu":
            outs = self.decoder.run(outputs, {**feeds, **dict(states)})
            return outs[0], outs[1:]
        io = self.decoder.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for name, value in states:
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in outputs[1:]:
            io.bind_output(name, "cuda", self.device_id)
        self.decoder.run_with_iobinding(io)
        values = io.get_outputs()
        return values[0].numpy(), list(values[1:])

    def zeros_state(self, rows):
        arrays = [np.zeros([rows, *s.shape[1:]], storage_dtype(s.dtype)) for s in self.spec.state]
        return arrays if self.device == "cpu" else [self._on_device(a) for a in arrays]

    def select(self, states, rows):
        if self.device == "cpu":
            return [np.asarray(a)[rows] for a in states]  # in their storage dtype
        return [self._on_device(s.numpy()[rows]) for s in states]

    def to_host(self, states):
        """float32 arrays: what the states store (an int8-row state's codes and exponents)."""
        return [np.asarray(s).astype(np.float32, copy=False) if self.device == "cpu" else s.numpy() for s in states]
