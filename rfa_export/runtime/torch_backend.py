"""PyTorch backend: runs a checkpoint's RFALanguageModel directly."""

import copy
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch

from ..export.lm_export import describe_export
from ..model.checkpoint import load_checkpoint
from ..model.lm import RFALanguageModel
from .backend import DecoderBackend

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


class TorchBackend(DecoderBackend):
    """State: a list of torch tensors on `device`. dtype "fp64" runs the whole model in float64 (a reference)."""

    name = "torch"

    def __init__(self, model: Union[RFALanguageModel, str, Path], device: str = "cpu", dtype: str = "fp32"):
        model = copy.deepcopy(model) if isinstance(model, RFALanguageModel) else load_checkpoint(model)
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, _TORCH_DTYPES[dtype]).eval()
        self.spec = describe_export(model, lowering="torch", dtype=dtype)
        self._state_dtype = torch.float64 if dtype == "fp64" else torch.float32

    @torch.no_grad()
    def run(self, input_ids, attention_mask, position_ids, state):
        ids = torch.tensor(np.asarray(input_ids), dtype=torch.int64, device=self.device)
        mask = torch.tensor(np.asarray(attention_mask), device=self.device)
        pos = None if position_ids is None else torch.tensor(np.asarray(position_ids), dtype=torch.int64, device=self.device)
        logits, new_state = self.model(ids, list(state), pos, mask[:, mask.shape[1] - ids.shape[1]:])
        return logits.float().cpu().numpy(), new_state

    def to_host(self, state) -> List[np.ndarray]:
        return [s.detach().to("cpu", torch.float32).numpy() for s in state]

    def from_host(self, arrays: Sequence[np.ndarray]):
        return [torch.tensor(np.asarray(a), device=self.device, dtype=self._state_dtype) for a in arrays]

    def zeros_state(self, batch: int):
        return [torch.zeros([batch, *s.shape[1:]], device=self.device, dtype=self._state_dtype) for s in self.spec.state]

    def select(self, state, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        return [s.index_select(0, idx) for s in state]

    def concat(self, states):
        return [torch.cat(parts, 0) for parts in zip(*states)]

    def batch_size(self, state) -> int:
        return int(state[0].shape[0])
