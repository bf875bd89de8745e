"""PyTorch backend: runs a checkpoint's RFALanguageModel directly."""

import copy
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch

from .. import __version__
from ..format.metadata import TORCH_LOWERING, describe_export
from ..model.checkpoint import load_checkpoint
from ..model.lm import RFALanguageModel
from .backend import DecoderBackend, InputError

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}")
    return _TORCH_DTYPES[dtype]


def torch_device(device: str) -> torch.device:
    """The device a torch backend runs on, refused at once when this torch cannot use it (rather than failing
    inside the first call)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}") from None
    if parsed.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise InputError(f"device {device!r}: this torch ({torch.__version__}) is a build without CUDA")
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise InputError(f"device {device!r}: torch sees {count} CUDA device(s)")
    elif parsed.type != "cpu":
        raise InputError(f"device {device!r}: the torch backends run on cpu or cuda")
    return parsed


def copy_checked_model(model):
    """A copy of a model given as an object, after checking that every floating-point weight is finite."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(f"the model's weight {name} contains NaN or infinity")
    return copy.deepcopy(model)


class TorchBackend(DecoderBackend):
    """State: a list of torch tensors on `device`. dtype "fp64" runs the whole model in float64 (a reference).
    tokenizer: the model's tokenizer.json, if it has one. cuda_graph (device cuda): single-token steps are
    replayed from CUDA graphs with the state updated in place (runtime/torch_step_graphs.py); a step's input
    state is then overwritten when it is the state the previous step returned."""

    name = "torch"

    def __init__(self, model: Union[RFALanguageModel, str, Path], device: str = "cpu", dtype: str = "fp32",
                 tokenizer: Union[str, Path, None] = None, cuda_graph: bool = False):
        self.device = torch_device(device)
        if not isinstance(cuda_graph, bool) or (cuda_graph and self.device.type != "cuda"):
            raise InputError(f"cuda_graph=True needs device cuda (got cuda_graph={cuda_graph!r} on {self.device})")
        model_dtype = torch_dtype(dtype)
        model = copy_checked_model(model) if isinstance(model, RFALanguageModel) else load_checkpoint(model)
        self.dtype = dtype
        self.model = model.to(self.device, model_dtype).eval()
        self.spec = describe_export(model.config, TORCH_LOWERING, dtype, {}, f"rfa-export {__version__}")
        self.tokenizer_path = None if tokenizer is None else Path(tokenizer)
        # the fp64 reference keeps a float64 state, unless the model stores a reduced-precision one: then that
        # storage, which the float64 scan widens on load and rounds once per call, as the contract says
        fp64_state = dtype == "fp64" and self.model.config.state_dtype == "float32"
        self._state_dtype = torch.float64 if fp64_state else self.model.state_dtype
        self._graphs = None
        if cuda_graph:
            self.use_step_graphs(None)

    def use_step_graphs(self, capture) -> None:
        """Replay single-token steps through StepGraphs; capture: how a step is captured (None: CUDA graphs;
        tests on the CPU pass one that re-runs the step eagerly on the same static buffers)."""
        from .torch_step_graphs import StepGraphs

        shapes = [tuple(s.shape[1:]) for s in self.spec.state]
        self._graphs = StepGraphs(self.model, shapes, self._state_dtype, self.device, self.needs_positions,
                                  capture=capture)

    @torch.no_grad()
    def _run(self, input_ids, attention_mask, position_ids, state):
        if self._graphs is not None and input_ids.shape[1] == 1:
            replayed = self._graphs.run(input_ids, attention_mask, position_ids, state)
            if replayed is not None:
                return replayed
        ids = torch.tensor(np.asarray(input_ids), dtype=torch.int64, device=self.device)
        mask = torch.tensor(np.asarray(attention_mask), dtype=torch.int64, device=self.device)
        pos = None if position_ids is None else torch.tensor(np.asarray(position_ids), dtype=torch.int64, device=self.device)
        logits, new_state = self.model(ids, list(state), pos, mask[:, mask.shape[1] - ids.shape[1]:])
        return logits.float().cpu().numpy(), new_state

    def to_host(self, state) -> List[np.ndarray]:
        return [s.detach().to("cpu", torch.float32).numpy() for s in state]

    def from_host(self, arrays: Sequence[np.ndarray]):
        return [torch.tensor(np.asarray(a, dtype=np.float32), device=self.device).to(self._state_dtype) for a in arrays]

    def zeros_state(self, batch: int):
        return [torch.zeros([batch, *s.shape[1:]], device=self.device, dtype=self._state_dtype) for s in self.spec.state]

    def select(self, state, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        return [s.index_select(0, idx) for s in state]

    def concat(self, states):
        return [torch.cat(parts, 0) for parts in zip(*states)]

    def state_shapes(self, state):
        """Native state tensors are reported with the model's state dtype when they have the backend's own
        state dtype (float64 for the fp64 reference)."""
        shapes = []
        for t in state if isinstance(state, (list, tuple)) else [None]:
            if not isinstance(t, torch.Tensor):
                raise InputError(f"a torch state is a list of tensors, got {type(t).__name__}")
            dtype = self.model.config.state_dtype if t.dtype == self._state_dtype else str(t.dtype).replace("torch.", "")
            if t.device.type != self.device.type:
                dtype += f" on {t.device}"
            shapes.append((tuple(t.shape), dtype))
        return shapes
