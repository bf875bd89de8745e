"""An RFASeq2Seq checkpoint (or model) run by PyTorch itself: the reference the exports are checked against.
torch is imported when one is opened, not with this module."""

from pathlib import Path
from typing import Union

import numpy as np

from .backend import Seq2SeqBackend


class TorchSeq2SeqBackend(Seq2SeqBackend):
    """The checkpoint's RFASeq2Seq itself; dtype "fp64" runs it in float64 (a reference)."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", dtype: str = "fp32", tokenizer: Union[str, Path, None] = None):
        import torch

        from ... import __version__
        from ...format.lowerings import LOWERINGS
        from ...format.seq2seq_metadata import describe_seq2seq_export
        from ...model.checkpoint import load_seq2seq_checkpoint
        from ...model.seq2seq import RFASeq2Seq
        from ..torch_backend import copy_checked_model, torch_device, torch_dtype

        self.torch, self.device = torch, torch_device(device)
        model_dtype = torch_dtype(dtype)
        model = copy_checked_model(model) if isinstance(model, RFASeq2Seq) else load_seq2seq_checkpoint(model)
        self.model = model.to(self.device, model_dtype).eval()
        # the fp64 reference keeps float64 self states, unless the model stores reduced-precision ones: then that
        # storage, which the float64 scan widens on load and rounds once per call (docs/op_contract.md)
        fp64_state = dtype == "fp64" and model.config.state_dtype == "float32"
        self._state_dtype = torch.float64 if fp64_state else model.state_dtype
        self.spec = describe_seq2seq_export(model.config, "plugin", "fp32", LOWERINGS["plugin"].opsets,
                                            f"rfa-export {__version__}")
        self.tokenizer_path = None if tokenizer is None else Path(tokenizer)

    def _tensor(self, array):
        return self.torch.as_tensor(np.asarray(array), device=self.device)

    def encode(self, input_ids, attention_mask):
        with self.torch.no_grad():
            return self.model.encode(self._tensor(input_ids), self._tensor(attention_mask))[1]

    def decode(self, input_ids, attention_mask, position_ids, state, cross):
        with self.torch.no_grad():
            logits, new = self.model.decode(self._tensor(input_ids), cross, list(state),
                                            None if position_ids is None else self._tensor(position_ids),
                                            self._tensor(attention_mask))
        return logits.float().cpu().numpy(), new

    def zeros_state(self, rows):
        return [self.torch.zeros([rows, *s.shape[1:]], device=self.device, dtype=self._state_dtype) for s in self.spec.state]

    def select(self, states, rows):
        idx = self.torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        return [s.index_select(0, idx) for s in states]

    def to_host(self, states):
        """float32 arrays: what the states store (an int8-row state's codes and exponents)."""
        return [s.detach().to("cpu", self.torch.float32).numpy() for s in states]
