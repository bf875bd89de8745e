"""The encoder-decoder on the GPU: PyTorch CUDA (the fused decode step for the self-attention) and onnxruntime
CUDA (device-resident states) against the CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import rel_err
from rfa_export.corpus import number_words, number_words_pairs
from rfa_export.export.seq2seq_export import export_seq2seq_checkpoint
from rfa_export.runtime.seq2seq import OnnxRuntimeSeq2SeqBackend, Seq2SeqDecoder, TorchSeq2SeqBackend

pytestmark = pytest.mark.gpu
BUNDLED = Path("examples/number_words_rfa.pt")
SOURCES = [s for s, _ in number_words_pairs(24, "test", seed=5)]


def _has_ort_cuda():
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def test_torch_cuda_translates_as_the_cpu():
    cpu = Seq2SeqDecoder(TorchSeq2SeqBackend(BUNDLED))
    gpu = Seq2SeqDecoder(TorchSeq2SeqBackend(BUNDLED, device="cuda"))
    assert [r.tokens for r in gpu.generate(SOURCES, 80)] == [r.tokens for r in cpu.generate(SOURCES, 80)]
    assert gpu.generate(["421,305"], 80)[0].text == number_words(421305)
    got, want = gpu.beam_search(SOURCES[:6], 4, 60), cpu.beam_search(SOURCES[:6], 4, 60)
    assert [[h[0] for h in x] for x in got] == [[h[0] for h in x] for x in want]
    s1, l1 = gpu.start(SOURCES[:8])
    s2, l2 = cpu.start(SOURCES[:8])
    for _ in range(20):
        tokens = l2.argmax(-1)
        l1, s1 = gpu.step(tokens, s1)
        l2, s2 = cpu.step(tokens, s2)
    assert rel_err(torch.from_numpy(l1), torch.from_numpy(l2)) <= 1e-4


@pytest.mark.skipif(not _has_ort_cuda(), reason="onnxruntime-gpu not installed (no CUDAExecutionProvider)")
def test_onnxruntime_cuda_translates_as_the_cpu(tmp_path):
    export_seq2seq_checkpoint(BUNDLED, tmp_path)
    cpu = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(tmp_path))
    gpu = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(tmp_path, device="cuda"))
    assert [r.tokens for r in gpu.generate(SOURCES, 80)] == [r.tokens for r in cpu.generate(SOURCES, 80)]
    got, want = gpu.beam_search(SOURCES[:6], 4, 60), cpu.beam_search(SOURCES[:6], 4, 60)
    assert [[h[0] for h in x] for x in got] == [[h[0] for h in x] for x in want]
    np.testing.assert_allclose([h[1] for x in got for h in x], [h[1] for x in want for h in x], rtol=1e-4)
