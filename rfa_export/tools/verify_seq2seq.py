"""rfa-export verify on an encoder-decoder export: onnxruntime against PyTorch in float64, on a ragged batch of
sources: the cross states out of the encoder, then the decoder's prefill (BOS) and single-token steps, each
backend carrying its own self states and reading its own cross states."""

from typing import Dict, List, Sequence

import numpy as np

from ..format.export_dir import open_seq2seq_export
from ..model.checkpoint import load_seq2seq_checkpoint
from ..runtime.seq2seq import OnnxRuntimeSeq2SeqBackend, Seq2SeqBackend, Seq2SeqDecoder, TorchSeq2SeqBackend
from ..runtime.state_values import state_values
from .verify import (REDUCED_STATE_TOLERANCES, TOLERANCES, Comparison, VerifyError, VerifyReport, _compare, graph_dtype,
                     model_matching_export)


def compare_seq2seq(backend: Seq2SeqBackend, reference: Seq2SeqBackend, sources: Dict[str, List[List[int]]],
                    decode_steps: int) -> List[Comparison]:
    rows = []
    cross_names = [c.output for c in backend.spec.cross_state]
    state_names = [s.output for s in backend.spec.state]
    dtypes = [s.dtype for s in backend.spec.state]

    def values(b: Seq2SeqBackend, states) -> List[np.ndarray]:  # what the self states stand for, not their codes
        return [state_values(a, d) for a, d in zip(b.to_host(states), dtypes)]
    for case, batch in sources.items():
        got, ref = Seq2SeqDecoder(backend), Seq2SeqDecoder(reference)
        got_state, got_logits = got.start(batch)
        ref_state, ref_logits = ref.start(batch)
        rows += [_compare(f"{case} encoder", n, g, r) for n, g, r in
                 zip(cross_names, backend.to_host(got_state.cross), reference.to_host(ref_state.cross))]
        rows.append(_compare(f"{case} prefill", "logits", got_logits, ref_logits))
        worst: Dict[str, Comparison] = {}
        for _ in range(decode_steps):
            tokens = ref_logits.argmax(-1)
            got_logits, got_state = got.step(tokens, got_state)
            ref_logits, ref_state = ref.step(tokens, ref_state)
            pairs = [("logits", got_logits, ref_logits)] + list(zip(
                state_names, values(backend, got_state.state), values(reference, ref_state.state)))
            for n, g, r in pairs:
                c = _compare(f"{case} {decode_steps} decode steps", n, g, r)
                if n not in worst or c.max_rel > worst[n].max_rel:
                    worst[n] = c
        rows += list(worst.values())
    return rows


def default_sources(vocab_size: int, lengths: Sequence[int], seed: int, byte_level: bool) -> Dict[str, List[List[int]]]:
    """A ragged batch of random sources (one per length), and for byte-level models real numbers to translate."""
    rng = np.random.default_rng(seed)
    sources = {f"random ragged lengths {','.join(map(str, lengths))}":
               [rng.integers(0, vocab_size, size=n).tolist() for n in lengths]}
    if byte_level:
        sources["numbers"] = [list(f"{int(n):,}".encode()) for n in rng.integers(0, 10**6, size=3)]
    return sources


def verify_seq2seq_export(out_dir, checkpoint, lengths: Sequence[int] = (1, 7, 64), decode_steps: int = 20,
                          seed: int = 0, tolerance=None, threads=None) -> VerifyReport:
    export = open_seq2seq_export(out_dir)
    meta = export.meta
    for path in (export.encoder_path, export.decoder_path):
        weights = graph_dtype(path)
        if weights != meta.dtype:
            raise VerifyError(f"{path}: the metadata says {meta.dtype} but the graph's weights are {weights}")
    model = model_matching_export(load_seq2seq_checkpoint(checkpoint), meta.config, checkpoint, out_dir)
    backend = OnnxRuntimeSeq2SeqBackend(out_dir, threads=threads)
    reference = TorchSeq2SeqBackend(model, dtype="fp64")
    cfg = model.config
    if tolerance is None:  # the reference rounds its self states too; the two may round apart by a step
        tolerance = max(TOLERANCES[meta.dtype], REDUCED_STATE_TOLERANCES.get(meta.state[0].dtype, 0.0))
    report = VerifyReport(tolerance)
    lengths = [min(n, cfg.max_source_length) for n in lengths]
    sources = default_sources(cfg.src_vocab_size, lengths, seed, byte_level=cfg.src_vocab_size >= 256)
    report.rows = compare_seq2seq(backend, reference, sources, decode_steps)
    return report
