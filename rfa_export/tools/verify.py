"""rfa-export verify: the exported model in onnxruntime against the checkpoint in PyTorch (float64), on the
same inputs: random tokens and real text, a prefill and then decode steps feeding the state back."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..corpus import pydoc_topics_split
from ..format.config import STATE_DTYPES
from ..format.export_dir import open_export
from ..runtime.state_values import state_values
from ..model.checkpoint import load_checkpoint
from ..runtime.backend import DecoderBackend
from ..runtime.onnxruntime_backend import OnnxRuntimeBackend
from ..runtime.torch_backend import TorchBackend

# max |got - ref| / max |ref| per tensor, against PyTorch in float64 (docs/export.md)
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}
# a bfloat16 state (docs/op_contract.md): onnxruntime's and the reference's states each round once per call and
# may land an ulp (up to 2^-7 relative) apart, which later steps can carry: two ulps
BF16_STATE_TOLERANCE = 2.0**-6
# an int8-row state: one code step is at most 2/127 of its row's largest entry; two steps, as for bf16
INT8_STATE_TOLERANCE = 4 / 127
REDUCED_STATE_TOLERANCES = {"bfloat16": BF16_STATE_TOLERANCE, "int8": INT8_STATE_TOLERANCE}


class VerifyError(ValueError):
    """The export and the checkpoint cannot be compared (they describe different models)."""


@dataclass
class Comparison:
    case: str
    tensor: str
    max_abs: float
    max_rel: float


@dataclass
class VerifyReport:
    tolerance: float
    rows: List[Comparison] = field(default_factory=list)

    @property
    def worst(self) -> Dict[str, float]:
        worst: Dict[str, float] = {}
        for r in self.rows:
            key = "logits" if r.tensor == "logits" else "state"
            worst[key] = max(worst.get(key, 0.0), r.max_rel)
        return worst

    @property
    def passed(self) -> bool:
        return all(r.max_rel <= self.tolerance for r in self.rows)


def _compare(case: str, name: str, got: np.ndarray, ref: np.ndarray) -> Comparison:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    diff = float(np.abs(got - ref).max()) if got.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return Comparison(case, name, diff, diff / scale if scale > 0 else diff)


def compare_backends(backend: DecoderBackend, reference: DecoderBackend, prompts: Dict[str, np.ndarray],
                     decode_steps: int) -> List[Comparison]:
    """For each prompt batch [B, T]: prefill both, then feed `decode_steps` tokens (the reference's greedy
    choice, so both see the same inputs) one at a time, carrying each backend's own state."""
    rows = []
    names = [s.output for s in backend.spec.state]
    dtypes = [s.dtype for s in backend.spec.state]

    def values(b: DecoderBackend, state) -> List[np.ndarray]:  # what the states stand for, not their codes
        return [state_values(a, d) for a, d in zip(b.to_host(state), dtypes)]
    for case, ids in prompts.items():
        B, T = ids.shape
        positions = np.broadcast_to(np.arange(T), (B, T)) if backend.needs_positions else None
        mask = np.ones((B, T), np.int64)
        got_logits, got_state = backend.run(ids, mask, positions, backend.zeros_state(B))
        ref_logits, ref_state = reference.run(ids, mask, positions, reference.zeros_state(B))
        rows.append(_compare(f"{case} prefill T={T}", "logits", got_logits, ref_logits))
        rows += [_compare(f"{case} prefill T={T}", n, g, r)
                 for n, g, r in zip(names, values(backend, got_state), values(reference, ref_state))]
        step_rows: Dict[str, Comparison] = {}
        token = ref_logits[:, -1].argmax(-1)
        for step in range(decode_steps):
            tok = token.reshape(B, 1).astype(np.int64)
            pos = np.full((B, 1), T + step, np.int64) if backend.needs_positions else None
            one = np.ones((B, 1), np.int64)
            got_logits, got_state = backend.run(tok, one, pos, got_state)
            ref_logits, ref_state = reference.run(tok, one, pos, ref_state)
            pairs = [("logits", got_logits, ref_logits)] + list(zip(names, values(backend, got_state),
                                                                    values(reference, ref_state)))
            for n, g, r in pairs:
                c = _compare(f"{case} {decode_steps} decode steps", n, g, r)
                if n not in step_rows or c.max_rel > step_rows[n].max_rel:
                    step_rows[n] = c
            token = ref_logits[:, -1].argmax(-1)
        rows += list(step_rows.values())
    return rows


def default_prompts(vocab_size: int, lengths: Sequence[int], batch: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prompts = {f"random B={batch} T={T}": rng.integers(0, vocab_size, size=(batch, T), dtype=np.int64) for T in lengths}
    if vocab_size >= 256:  # byte-level: real English text
        _, held = pydoc_topics_split()
        T = max(lengths)
        starts = rng.integers(0, len(held) - T - 1, size=batch)
        prompts[f"text B={batch}"] = np.stack([np.frombuffer(held[s : s + T], np.uint8) for s in starts]).astype(np.int64)
    return prompts


def graph_dtype(model_path) -> str:
    """The activation dtype the graph's weights actually have (fp32, fp16 or bf16), from its initializers."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
    sizes: Dict[str, int] = {}
    for t in model.graph.initializer:
        if t.data_type in names:
            n = 1
            for d in t.dims:
                n *= d
            sizes[names[t.data_type]] = sizes.get(names[t.data_type], 0) + n
    return max(sizes, key=sizes.get) if sizes else "fp32"


def model_matching_export(model, exported_config: dict, checkpoint, out_dir):
    """The checkpoint's model with the state dtype the export was made with (--state-dtype), refused unless its
    config is then the export's."""
    if exported_config.get("state_dtype") in STATE_DTYPES:
        model = model.with_state_dtype(exported_config["state_dtype"])
    if model.config.to_dict() != exported_config:
        diff = sorted(k for k in exported_config if exported_config.get(k) != model.config.to_dict().get(k))
        raise VerifyError(f"{checkpoint} does not match the export in {out_dir} (config differs in: {', '.join(diff)})")
    return model


def verify_export(out_dir, checkpoint, lengths: Sequence[int] = (1, 7, 64), decode_steps: int = 20,
                  batch: int = 2, seed: int = 0, tolerance: Optional[float] = None, threads: Optional[int] = None) -> VerifyReport:
    """The tolerance is the one of the model's own dtype: its embedded metadata (which the JSON beside it
    must equal), checked against the dtype of the graph's weights."""
    export = open_export(out_dir)
    meta = export.meta
    weights = graph_dtype(export.model_path)
    if weights != meta.dtype:
        raise VerifyError(f"{out_dir}: the metadata says {meta.dtype} but the graph's weights are {weights}")
    model = model_matching_export(load_checkpoint(checkpoint), meta.config, checkpoint, out_dir)
    backend = OnnxRuntimeBackend(out_dir, threads=threads)
    reference = TorchBackend(model, dtype="fp64")
    if tolerance is None:
        tolerance = TOLERANCES[meta.dtype]
        # the reference rounds its state too; the two may round apart by a step
        tolerance = max(tolerance, REDUCED_STATE_TOLERANCES.get(meta.state[0].dtype, 0.0))
    report = VerifyReport(tolerance)
    report.rows = compare_backends(backend, reference, default_prompts(meta.vocab_size, lengths, batch, seed), decode_steps)
    return report


def format_report(report: VerifyReport) -> str:
    lines = [f"{'case':34s} {'tensor':36s} {'max abs':>10s} {'max rel':>10s}"]
    for r in report.rows:
        flag = "" if r.max_rel <= report.tolerance else "  <-- over tolerance"
        lines.append(f"{r.case:34s} {r.tensor:36s} {r.max_abs:10.3e} {r.max_rel:10.3e}{flag}")
    worst = ", ".join(f"{k} {v:.2e}" for k, v in report.worst.items())
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"{verdict}: worst relative error {worst}; tolerance {report.tolerance:.0e} (max|ort - torch| / max|torch|, torch in float64)")
    return "\n".join(lines)


def save_polygraphy_reference(out_dir, checkpoint, dest, length: int = 7, batch: int = 2, seed: int = 0):
    """DIR/inputs.json (one feed dict) and DIR/torch_outputs.json (a polygraphy RunResults of PyTorch's
    float64 outputs), for `polygraphy run model.onnx --onnxrt --load-inputs ... --load-outputs ...`."""
    try:
        from polygraphy.comparator import IterationResult, RunResults
        from polygraphy.json import save_json
    except ImportError:
        raise RuntimeError("polygraphy is not installed (pip install polygraphy)") from None
    meta = open_export(out_dir).meta
    if meta.state[0].dtype != "float32":
        raise VerifyError(f"{out_dir}: a {meta.state[0].dtype} state cannot be fed through polygraphy's json inputs "
                          "(numpy has no bfloat16 there); use rfa-export verify")
    reference = TorchBackend(load_checkpoint(checkpoint), dtype="fp64")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, meta.vocab_size, size=(batch, length), dtype=np.int64)
    state = [np.abs(rng.standard_normal([batch, *s.shape[1:]])).astype(np.float32) * 0.1 for s in meta.state]
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, length), np.int64)}
    positions = None
    if meta.input("position_ids") is not None:
        positions = np.broadcast_to(np.arange(length), (batch, length)).astype(np.int64)
        feeds["position_ids"] = positions
    feeds.update({s.input: a for s, a in zip(meta.state, state)})
    feeds.update({s.input: np.zeros([batch, *s.shape[1:]], np.float32) for s in meta.extra_state})
    logits, new_state = reference.run(ids, feeds["attention_mask"], positions, reference.from_host(state))
    outputs = {"logits": logits.astype(np.float32)}
    outputs.update({s.output: a.astype(np.float32) for s, a in zip(meta.state, reference.to_host(new_state))})
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    save_json([feeds], str(dest / "inputs.json"))
    results = RunResults()
    results.append(("pytorch-fp64", [IterationResult(outputs, runner_name="pytorch-fp64")]))
    results.save(str(dest / "torch_outputs.json"))
    return [dest / "inputs.json", dest / "torch_outputs.json"]
