"""Single-token steps of the PyTorch backend replayed from CUDA graphs (TorchBackend(cuda_graph=True)).

Eagerly, a decode step of the model is ~7 kernels a layer launched from Python, and the functional state path
(a new state each step) cannot use the fused decode kernels, which update the state in place. Here each batch
size gets static input buffers and a static state, captured once around `model(..., inplace_state=True)`;
a step copies the tokens in, copies the state in unless it is that static state (the previous step's output),
replays, and returns the static state. So a step's input state is overwritten when it is the state the previous
step returned (docs/runtime.md: keep a state you want to return to as a snapshot).

Batches are padded to the next power of two with rows whose mask is 0 (a masked step keeps its state and its
logits are dropped), so a server whose batch grows and shrinks by one sequence at a time replays a few graphs
instead of capturing one per size.
"""

import warnings
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

Replay = Callable[[], torch.Tensor]


def capture_cuda_graph(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int = 2) -> Replay:
    """fn() captured as a CUDA graph after `warmup` runs on a side stream (compilation, autotuning and lazy
    initialisation happen there, not in the capture) -> a replay that returns fn's output tensor, refreshed."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    replay.graph = graph  # keeps the graph (and its memory pool) alive as long as the replay
    return replay


def padded_batch(batch: int) -> int:
    """The batch size whose graph serves `batch` sequences: the next power of two."""
    return 1 << (batch - 1).bit_length()


class _BatchGraph:
    """One padded batch size: the packed token/mask/position buffer [3, B, 1], the static state and the replay."""

    def __init__(self, model, batch: int, state_shapes, state_dtype, device, with_positions: bool, capture):
        self.inputs = torch.zeros((3, batch, 1), dtype=torch.int64, device=device)
        self.inputs[1].fill_(1)
        self.state = [torch.zeros((batch, *shape), dtype=state_dtype, device=device) for shape in state_shapes]
        ids, mask, pos = self.inputs.unbind(0)
        pos = pos if with_positions else None

        def step() -> torch.Tensor:
            return model(ids, self.state, pos, mask, inplace_state=True)[0].float()

        self.replay = capture(step)

    def run(self, host_inputs: np.ndarray, state) -> Tuple[np.ndarray, List[torch.Tensor]]:
        """host_inputs [3, b, 1] for the first b <= B rows (the rest are masked) -> (logits [b, 1, V] on the host,
        the first b rows of the static state)."""
        batch = host_inputs.shape[1]
        padded = np.zeros(self.inputs.shape, dtype=np.int64)
        padded[:, :batch] = host_inputs
        self.inputs.copy_(torch.from_numpy(padded))
        rows = [mine[:batch] for mine in self.state]
        if not all(_same_tensor(given, mine) for given, mine in zip(state, rows)):
            for given, mine in zip(state, rows):
                if given.untyped_storage().data_ptr() == mine.untyped_storage().data_ptr():
                    given = given.clone()  # other rows of this static state: copy_ refuses overlapping memory
                mine.copy_(given)
        logits = self.replay()
        return logits[:batch].cpu().numpy(), rows


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b view the same memory the same way (the state a previous step returned)."""
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


class StepGraphs:
    """The replayed single-token steps of one model, for the `max_batches` padded batch sizes used most recently
    (each holds a static state of its size; the least recently used is dropped). A batch size whose capture fails
    runs eagerly, with one warning naming why."""

    def __init__(self, model, state_shapes, state_dtype, device: torch.device, with_positions: bool,
                 max_batches: int = 6, capture: Optional[Callable] = None):
        self.model, self.state_shapes, self.state_dtype = model, state_shapes, state_dtype
        self.device, self.with_positions, self.max_batches = device, with_positions, max_batches
        self.capture = capture or (lambda fn: capture_cuda_graph(fn, device))
        self._graphs: "OrderedDict[int, _BatchGraph]" = OrderedDict()
        self._eager_batches = set()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: Optional[np.ndarray], state):
        """input_ids, attention_mask [B, 1] int64, position_ids [B, 1] or None -> (logits [B, 1, V] float32 on
        the host, the new state), or None where this batch size runs eagerly."""
        graph = self._graph(padded_batch(input_ids.shape[0]))
        if graph is None:
            return None
        host = np.stack([input_ids, attention_mask, position_ids if position_ids is not None
                         else np.zeros_like(input_ids)])
        return graph.run(host, state)

    def _graph(self, batch: int) -> Optional[_BatchGraph]:
        if batch in self._eager_batches:
            return None
        graph = self._graphs.get(batch)
        if graph is not None:
            self._graphs.move_to_end(batch)
            return graph
        if len(self._graphs) >= self.max_batches:
            self._graphs.popitem(last=False)
        try:
            graph = _BatchGraph(self.model, batch, self.state_shapes, self.state_dtype, self.device,
                                self.with_positions, self.capture)
        except RuntimeError as e:  # capture refused (an operation that syncs with the host, a backend limit)
            warnings.warn(f"rfa-export: batches padded to {batch} decode without a CUDA graph: {str(e).splitlines()[0]}")
            self._eager_batches.add(batch)
            return None
        self._graphs[batch] = graph
        return graph
