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


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 10^9: 421305 -> 'four hundred twenty-one thousand three hundred five'."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number_words takes 0 <= n < 10^9, got {n}")

    def below_thousand(k: int) -> list:
        words = []
        if k >= 100:
            words += [_ONES[k // 100], "hundred"]
            k %= 100
        if k >= 20:
            words.append(_TENS[k // 10] + (f"-{_ONES[k % 10]}" if k % 10 else ""))
        elif k:
            words.append(_ONES[k])
        return words

    if n == 0:
        return "zero"
    words = []
    for scale, name in ((10**6, "million"), (10**3, "thousand"), (1, "")):
        part = n // scale % 1000
        if part:
            words += below_thousand(part) + ([name] if name else [])
    return " ".join(words)


def number_words_split(n: int) -> str:
    """'train' or 'test' for a number: a fixed hash puts one number in ten in the held-out set."""
    return "test" if (n * 2654435761) % 2**32 % 10 == 0 else "train"


def number_words_pairs(count: int, split: str, seed: int, max_number: int = 10**6):
    """`count` (source, target) pairs of `split`: digits with thousands separators -> English words, numbers
    drawn log-uniformly over [0, max_number) so short and long numbers both appear."""
    import random

    rng = random.Random(seed)
    pairs = []
    while len(pairs) < count:
        n = int(10 ** rng.uniform(0, math.log10(max_number))) - 1
        if number_words_split(n) == split:
            pairs.append((f"{n:,}", number_words(n)))
    return pairs
