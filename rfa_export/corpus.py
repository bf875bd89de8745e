"""Real English text every machine has without network: CPython's pydoc topic documentation, as bytes."""

import math
from typing import Tuple

import torch


def pydoc_topics_split(heldout_every: int = 10) -> Tuple[bytes, bytes]:
    """(train, held_out) UTF-8 bytes of pydoc_data.topics; every `heldout_every`-th topic (sorted) is held out."""
    from pydoc_data.topics import topics

    train, held = [], []
    for i, key in enumerate(sorted(topics)):
        (held if i % heldout_every == 0 else train).append(topics[key])
    return "\n".join(train).encode("utf-8"), "\n".join(held).encode("utf-8")


def bytes_to_ids(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def unigram_bits_per_byte(train: bytes, test: bytes) -> float:
    """Cross-entropy of a add-one smoothed byte unigram fitted on train, evaluated on test."""
    counts = torch.bincount(bytes_to_ids(train), minlength=256).to(torch.float64) + 1.0
    logp = torch.log2(counts / counts.sum())
    return float(-logp[bytes_to_ids(test)].mean())


@torch.no_grad()
def bits_per_byte(model, data: bytes, block: int = 512, batch: int = 8) -> float:
    """Held-out bits per byte of a model whose forward(input_ids) returns (logits, ...), scored on
    non-overlapping blocks (each predicts its bytes 2..block from the ones before)."""
    ids = bytes_to_ids(data)
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block)
    y = ids[1 : n * block + 1].view(n, block)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        logits = model(x[i : i + batch])[0].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum")
        total += float(loss)
        count += y[i : i + batch].numel()
    return total / count / math.log(2)
