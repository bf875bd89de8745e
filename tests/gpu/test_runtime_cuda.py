"""The runtime on the GPU: onnxruntime CUDA (IO binding, device-resident state) and PyTorch CUDA."""

import pytest

from helpers import changing_batch_tokens, rel_err
from rfa_export.export import export_checkpoint
from rfa_export.runtime import Decoder, OnnxRuntimeBackend, TorchBackend, restore, snapshot

pytestmark = pytest.mark.gpu
BUNDLED = "examples/tiny_rfa.pt"
PROMPTS = [f"{w} statement" for w in ("The import", "The if", "A class", "The with", "The for")] * 4


def _has_ort_cuda():
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


needs_ort_cuda = pytest.mark.skipif(not _has_ort_cuda(), reason="onnxruntime-gpu not installed (no CUDAExecutionProvider)")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    export_checkpoint(BUNDLED, out)
    return out


@needs_ort_cuda
def test_ort_cuda_greedy_tokens_and_logits_match_pytorch(out_dir):
    import torch

    cuda = Decoder(OnnxRuntimeBackend(out_dir, device="cuda"))
    ref = Decoder(TorchBackend(BUNDLED))
    got, want = [r.tokens for r in cuda.generate(PROMPTS, 100)], [r.tokens for r in ref.generate(PROMPTS, 100)]
    mismatches = [(i, next(j for j, (a, b) in enumerate(zip(g, w)) if a != b)) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not mismatches, f"(prompt, first differing token): {mismatches}"
    sc, lc = cuda.prefill(PROMPTS)
    sr, lr = ref.prefill(PROMPTS)
    worst = 0.0
    for _ in range(100):
        tokens = lr.argmax(-1)
        lc, sc = cuda.step(tokens, sc)
        lr, sr = ref.step(tokens, sr)
        worst = max(worst, rel_err(torch.from_numpy(lc), torch.from_numpy(lr)))
    assert worst <= 1e-4


@needs_ort_cuda
def test_ort_cuda_state_stays_on_the_device_and_buffers_are_reused(out_dir):
    backend = OnnxRuntimeBackend(out_dir, device="cuda")
    dec = Decoder(backend)
    state, logits = dec.prefill(["The import statement"])
    assert all(v.device_name().lower() == "cuda" for v in state.state)
    seen = set()
    for _ in range(6):
        logits, state = dec.step(logits.argmax(-1), state)
        seen.update(v.data_ptr() for v in state.state)
    assert len(seen) == 2 * len(state.state)  # two buffers per state tensor, reused: no allocation per step


@needs_ort_cuda
def test_state_moves_between_cpu_and_cuda(out_dir):
    cpu, cuda = Decoder(OnnxRuntimeBackend(out_dir)), Decoder(OnnxRuntimeBackend(out_dir, device="cuda"))
    state, logits = cpu.prefill(PROMPTS[:3])
    moved, moved_logits = restore(cuda, snapshot(cpu, state, logits))
    a, b = [], []
    for _ in range(30):
        t1, t2 = logits.argmax(-1), moved_logits.argmax(-1)
        a.append(t1.tolist())
        b.append(t2.tolist())
        logits, state = cpu.step(t1, state)
        moved_logits, moved = cuda.step(t2, moved)
    assert a == b


@needs_ort_cuda
def test_ragged_batches_and_beam_search_on_cuda(out_dir):
    cuda = Decoder(OnnxRuntimeBackend(out_dir, device="cuda"))
    prompts = ["a", "The import statement is", "def"]
    batched = cuda.generate(prompts, 40)
    assert [cuda.generate([p], 40)[0].tokens for p in prompts] == [r.tokens for r in batched]
    cpu = Decoder(OnnxRuntimeBackend(out_dir))
    assert [b[0] for b in cuda.beam_search("The import statement", 4, 15)] == [b[0] for b in cpu.beam_search("The import statement", 4, 15)]


@needs_ort_cuda
def test_ort_cuda_graph_steps(tmp_path):
    """onnxruntime captures only graphs without control flow: the --lowering ort export (no Scan)."""
    export_checkpoint(BUNDLED, tmp_path, lowering="ort")
    graphed = Decoder(OnnxRuntimeBackend(tmp_path, device="cuda", cuda_graph=True))
    ref = Decoder(TorchBackend(BUNDLED))
    assert [r.tokens for r in graphed.generate(PROMPTS[:4], 60)] == [r.tokens for r in ref.generate(PROMPTS[:4], 60)]


def test_torch_cuda_backend_matches_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = Decoder(TorchBackend(BUNDLED, device="cuda"))
    cpu = Decoder(TorchBackend(BUNDLED))
    assert [r.tokens for r in gpu.generate(PROMPTS, 100)] == [r.tokens for r in cpu.generate(PROMPTS, 100)]


def test_torch_cuda_graph_steps_match_the_cpu_backend():
    """TorchBackend(cuda_graph=True) replays single-token steps from CUDA graphs on the fused in-place decode
    kernels: greedy tokens of 20 prompts equal the CPU backend's, logits within 1e-4 over 60 steps, a continuous
    batch whose size changes and beam search agree, and no batch size fell back to eager steps."""
    import numpy as np
    import torch


    graphed = Decoder(TorchBackend(BUNDLED, device="cuda", cuda_graph=True))
    cpu = Decoder(TorchBackend(BUNDLED))
    assert [r.tokens for r in graphed.generate(PROMPTS, 100)] == [r.tokens for r in cpu.generate(PROMPTS, 100)]
    sg, lg = graphed.prefill(PROMPTS[:5])
    sc, lc = cpu.prefill(PROMPTS[:5])
    worst = 0.0
    for _ in range(60):
        tokens = lc.argmax(-1)
        lg, sg = graphed.step(tokens, sg)
        lc, sc = cpu.step(tokens, sc)
        worst = max(worst, rel_err(torch.from_numpy(lg), torch.from_numpy(lc)))
    assert worst <= 1e-4
    assert changing_batch_tokens(graphed, PROMPTS) == changing_batch_tokens(cpu, PROMPTS)
    beams = [[seq for seq, _ in dec.beam_search(PROMPTS[0], 4, 20)] for dec in (graphed, cpu)]
    assert beams[0] == beams[1]
    graphs = graphed.backend._graphs
    assert graphs._graphs and not graphs._eager_batches
    assert np.isfinite(lg).all()
