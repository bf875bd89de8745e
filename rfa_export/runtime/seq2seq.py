"""Encoder-decoder decoding with one API over PyTorch and onnxruntime: encode each source once into the decoder
layers' cross states, then greedy, sampled or beam-search decoding. Beam search reorders only the self states;
the cross states stay one per source (the decoder reads them for the source's contiguous rows), never copied
per beam."""

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..format.seq2seq_metadata import Seq2SeqExportMetadata
from .backend import MAX_POSITION, InputError, NonFiniteError, as_token_array
from .decoder import GenerationResult, check_max_new
from .onnxruntime_backend import run_host_bound, session_settings, storage_dtype
from .sampling import SamplingParams, check_int, check_sampling, check_seeds, log_softmax, sample_token
from .tokenizer import ByteTokenizer, HuggingFaceTokenizer


class Seq2SeqBackend(abc.ABC):
    """encode: sources -> cross states (native); decode: a chunk of target tokens against self and cross states.
    Decoder rows are grouped by source: decoder_batch = sources x rows per source, one source's rows contiguous."""

    name = "backend"
    spec: Seq2SeqExportMetadata
    tokenizer_path = None

    @abc.abstractmethod
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        """[B, S] int64 twice -> cross states (one per decoder layer, [B, H, F, Dv + 1])."""

    @abc.abstractmethod
    def decode(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: Optional[np.ndarray],
               state: Any, cross: Any) -> Tuple[np.ndarray, Any]:
        """[Bd, T] int64 -> (logits [Bd, T, V] float32 on the host, new self states)."""

    @abc.abstractmethod
    def zeros_state(self, rows: int) -> Any: ...

    @abc.abstractmethod
    def select(self, states: Any, rows: np.ndarray) -> Any:
        """Rows of a list of native tensors (self states: beam reordering; cross states: dropping sources)."""

    @abc.abstractmethod
    def to_host(self, states: Any) -> List[np.ndarray]: ...

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def needs_positions(self) -> bool:
        return self.spec.model_config.positional != "none"


class OnnxRuntimeSeq2SeqBackend(Seq2SeqBackend):
    """encoder_model.onnx + decoder_model.onnx on onnxruntime. CPU: numpy states. CUDA: states stay on the
    device as OrtValues (IO binding); only tokens go in and logits come out."""

    name = "onnxruntime"

    def __init__(self, out_dir: Union[str, Path], device: str = "cpu", threads: Optional[int] = None, device_id: int = 0):
        import onnxruntime as ort

        from ..format.export_dir import open_seq2seq_export

        export = open_seq2seq_export(out_dir)
        self.spec, self.tokenizer_path = export.meta, export.tokenizer_path
        self._reduced_state = any(s.dtype != "float32" for s in self.spec.state)
        if self._reduced_state and device == "cuda":
            raise ValueError(f"the onnxruntime backend takes a {self.spec.state[0].dtype} self state on the CPU only; "
                             "on CUDA use the torch backend or export with state_dtype float32")
        options, providers = session_settings(ort, device, device_id, threads, self.spec.dtype)
        self._ort, self.device, self.device_id = ort, device, device_id
        self.encoder = ort.InferenceSession(str(export.encoder_path), options, providers=providers)
        self.decoder = ort.InferenceSession(str(export.decoder_path), options, providers=providers)
        self._cross_outputs = [c.output for c in self.spec.cross_state]

    def _on_device(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self.device_id)

    def encode(self, input_ids, attention_mask):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.device == "cpu":
            return self.encoder.run(self._cross_outputs, feeds)
        io = self.encoder.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for name in self._cross_outputs:
            io.bind_output(name, "cuda", self.device_id)
        self.encoder.run_with_iobinding(io)
        return list(io.get_outputs())

    def decode(self, input_ids, attention_mask, position_ids, state, cross):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if position_ids is not None:
            feeds["position_ids"] = position_ids
        states = [(s.input, v) for s, v in zip(self.spec.state, state)] + \
                 [(c.input, v) for c, v in zip(self.spec.cross_state, cross)]
        outputs = ["logits"] + [s.output for s in self.spec.state]
        if self._reduced_state:
            return run_host_bound(self.decoder, {**feeds, **dict(states[len(state):])}, self.spec.state, state)
        if self.device == "cpu":
            outs = self.decoder.run(outputs, {**feeds, **dict(states)})
            return outs[0], outs[1:]
        io = self.decoder.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for name, value in states:
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in outputs[1:]:
            io.bind_output(name, "cuda", self.device_id)
        self.decoder.run_with_iobinding(io)
        values = io.get_outputs()
        return values[0].numpy(), list(values[1:])

    def zeros_state(self, rows):
        arrays = [np.zeros([rows, *s.shape[1:]], storage_dtype(s.dtype)) for s in self.spec.state]
        return arrays if self.device == "cpu" else [self._on_device(a) for a in arrays]

    def select(self, states, rows):
        if self.device == "cpu":
            return [np.asarray(a)[rows] for a in states]  # in their storage dtype
        return [self._on_device(s.numpy()[rows]) for s in states]

    def to_host(self, states):
        """float32 arrays: what the states store (an int8-row state's codes and exponents)."""
        return [np.asarray(s).astype(np.float32, copy=False) if self.device == "cpu" else s.numpy() for s in states]


class TorchSeq2SeqBackend(Seq2SeqBackend):
    """The checkpoint's RFASeq2Seq itself; dtype "fp64" runs it in float64 (a reference)."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", dtype: str = "fp32", tokenizer: Union[str, Path, None] = None):
        import torch

        from .. import __version__
        from ..format.lowerings import LOWERINGS
        from ..format.seq2seq_metadata import describe_seq2seq_export
        from ..model.checkpoint import load_seq2seq_checkpoint
        from ..model.seq2seq import RFASeq2Seq

        from .torch_backend import copy_checked_model, torch_device, torch_dtype

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


def open_seq2seq_backend(kind: str, source=None, checkpoint=None, device: str = "cpu", **options) -> Seq2SeqBackend:
    if kind == "torch":
        path = checkpoint or source
        if path is None or Path(path).is_dir():
            raise ValueError("the torch backend runs a checkpoint: pass --checkpoint MODEL.pt")
        return TorchSeq2SeqBackend(path, device=device, **options)
    if kind == "onnxruntime":
        if source is None:
            raise ValueError("the onnxruntime backend needs an export directory")
        return OnnxRuntimeSeq2SeqBackend(source, device=device, **options)
    raise ValueError(f"unknown backend {kind!r} for an encoder-decoder; choose onnxruntime or torch")


class Seq2SeqTokenizer:
    """Text for a byte-level encoder-decoder (vocab 258: bytes, then BOS and EOS) or through a tokenizer.json:
    sources are encoded as they are; BOS, EOS and other ids past the text vocabulary are left out of the text."""

    def __init__(self, tokenizer, specials: Sequence[int]):
        self.tokenizer, self.specials = tokenizer, set(specials)

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.specials and (
            not isinstance(self.tokenizer, ByteTokenizer) or i < 256)])


@dataclass
class Seq2SeqState:
    """Decoder rows grouped by source (rows_per_source contiguous rows each), their self states and next
    positions, and the cross states (one per source)."""

    state: Any
    cross: Any
    positions: np.ndarray  # [rows]
    rows_per_source: int

    @property
    def rows(self) -> int:
        return int(self.positions.shape[0])


class Seq2SeqDecoder:
    def __init__(self, backend: Seq2SeqBackend, tokenizer=None):
        self.backend = backend
        cfg = backend.spec.model_config
        self.bos, self.eos = cfg.bos_token_id, cfg.eos_token_id
        self.max_source_length = cfg.max_source_length
        if tokenizer is None:
            if backend.tokenizer_path is not None:
                tokenizer = HuggingFaceTokenizer(backend.tokenizer_path)
            elif cfg.src_vocab_size >= 256 and cfg.tgt_vocab_size >= 256:
                tokenizer = ByteTokenizer()
        self.tokenizer = None if tokenizer is None else Seq2SeqTokenizer(tokenizer, (self.bos, self.eos))

    # --- inputs -----------------------------------------------------------------------------------------------

    def encode_source(self, source, index: int = 0) -> List[int]:
        cfg = self.backend.spec.model_config
        if isinstance(source, str):
            if self.tokenizer is None:
                raise InputError("this model has no tokenizer: pass the source as token ids")
            ids = self.tokenizer.encode(source)
        elif isinstance(source, (bytes, bytearray)):
            raise InputError(f"source {index} is bytes: pass text (str) or a list of token ids")
        else:
            ids = as_token_array(source, f"source {index}", cfg.src_vocab_size)
            if ids.ndim != 1:
                raise InputError(f"source {index} must be one list of token ids, got shape {list(ids.shape)}")
            ids = ids.tolist()
        if not ids:
            raise InputError(f"source {index} is empty")
        as_token_array(ids, f"source {index}", cfg.src_vocab_size)
        if len(ids) > self.max_source_length:
            raise InputError(f"source {index} has {len(ids)} tokens, more than the model's max_source_length "
                             f"{self.max_source_length}")
        return [int(t) for t in ids]

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    # --- the verbs ------------------------------------------------------------------------------------------

    def start(self, sources: Sequence, prefixes: Optional[Sequence[Sequence[int]]] = None,
              rows_per_source: int = 1) -> Tuple[Seq2SeqState, np.ndarray]:
        """Encode the sources (right-padded, exact per source) and run the decoder over the target prefixes
        (default: BOS alone; ragged, right-padded, exact per row), rows_per_source identical rows per source.
        Returns (state, each row's next-token logits [rows, V])."""
        if isinstance(sources, (str, bytes)):
            raise InputError("sources must be a list (of strings or of token-id lists)")
        encoded = [self.encode_source(s, i) for i, s in enumerate(sources)]
        if not encoded:
            raise InputError("no sources")
        rows_per_source = check_int("rows_per_source", rows_per_source, 1, 4096)
        B, S = len(encoded), max(map(len, encoded))
        src = np.zeros((B, S), np.int64)
        src_mask = np.zeros((B, S), np.int64)
        for i, e in enumerate(encoded):
            src[i, : len(e)], src_mask[i, : len(e)] = e, 1
        cross = self.backend.encode(src, src_mask)
        if prefixes is None:
            prefixes = [[self.bos]] * B
        if len(prefixes) != B:
            raise InputError(f"{len(prefixes)} target prefixes for {B} sources")
        prefixes = [as_token_array(p, f"prefix {i}", self.backend.vocab_size).reshape(-1).tolist()
                    for i, p in enumerate(prefixes)]
        if any(not p for p in prefixes):
            raise InputError("a target prefix is empty (it begins with the BOS token)")
        rows = [p for p in prefixes for _ in range(rows_per_source)]
        lengths = np.array([len(p) for p in rows], np.int64)
        L = int(lengths.max())
        ids = np.zeros((len(rows), L), np.int64)
        mask = np.zeros((len(rows), L), np.int64)
        for i, p in enumerate(rows):
            ids[i, : len(p)], mask[i, : len(p)] = p, 1
        positions = np.broadcast_to(np.arange(L), ids.shape).astype(np.int64)
        logits, state = self.backend.decode(ids, mask, positions if self.backend.needs_positions else None,
                                            self.backend.zeros_state(len(rows)), cross)
        last = logits[np.arange(len(rows)), lengths - 1]
        return Seq2SeqState(state, cross, lengths, rows_per_source), last

    def step(self, tokens: Sequence[int], state: Seq2SeqState) -> Tuple[np.ndarray, Seq2SeqState]:
        tokens = as_token_array(tokens, "step tokens", self.backend.vocab_size).reshape(-1)
        if tokens.shape[0] != state.rows:
            raise InputError(f"{tokens.shape[0]} tokens for {state.rows} decoder rows")
        if int(state.positions.max()) >= MAX_POSITION:
            raise InputError(f"positions would pass {MAX_POSITION}")
        pos = state.positions[:, None] if self.backend.needs_positions else None
        logits, new = self.backend.decode(tokens[:, None], np.ones((state.rows, 1), np.int64), pos, state.state, state.cross)
        return logits[:, 0], Seq2SeqState(new, state.cross, state.positions + 1, state.rows_per_source)

    def keep(self, state: Seq2SeqState, rows: Sequence[int], sources: Optional[Sequence[int]] = None) -> Seq2SeqState:
        """The decoder rows `rows` (self states reordered: beams), and, when `sources` is given, only those
        sources' cross states (rows must then be grouped by the kept sources, rows_per_source each)."""
        rows = np.asarray(rows, dtype=np.int64)
        cross = state.cross if sources is None else self.backend.select(state.cross, np.asarray(sources, dtype=np.int64))
        per_source = state.rows_per_source if sources is None else len(rows) // max(1, len(sources))
        return Seq2SeqState(self.backend.select(state.state, rows), cross, state.positions[rows], per_source)

    def generate(self, sources: Sequence, max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
                 seeds: Optional[Sequence[int]] = None) -> List[GenerationResult]:
        """Greedy or sampled decoding of every source until EOS (not part of the text) or max_new_tokens."""
        check_max_new(max_new_tokens)
        check_sampling(sampling)
        state, logits = self.start(sources)
        seeds = check_seeds(seeds, len(sources), "source")
        rngs = [None if sampling.greedy else np.random.default_rng(
            seeds[i] if seeds is not None else (None if sampling.seed is None else [sampling.seed, i]))
            for i in range(len(sources))]
        results = [GenerationResult(i) for i in range(len(sources))]
        live = list(range(len(sources)))
        for _ in range(max_new_tokens):
            tokens = []
            for row, i in enumerate(live):
                try:
                    tokens.append(sample_token(logits[row], sampling, rngs[i]))
                except NonFiniteError as e:
                    raise NonFiniteError(f"source {i}: {e}") from None
            going = []
            for row, (i, token) in enumerate(zip(live, tokens)):
                if token == self.eos:
                    results[i].finish_reason = "stop_token"
                else:
                    results[i].tokens.append(token)
                    going.append(row)
            if not going:
                live = []
                break
            if len(going) < len(live):
                state = self.keep(state, going, going)
                logits = logits[going]
                live = [live[r] for r in going]
            logits, state = self.step([tokens[r] for r in going], state)
        for i in live:
            results[i].finish_reason = "length"
        for r in results:
            r.text = self.decode_text(r.tokens)
        return results

    def beam_search(self, sources: Sequence, num_beams: int, max_new_tokens: int,
                    length_penalty: float = 1.0) -> List[List[Tuple[List[int], float]]]:
        """Per source, the num_beams best (tokens, score) hypotheses, best first; score = sum of log-probs /
        n ** length_penalty, n the tokens generated (an ending EOS counts, and is not in the tokens). A source
        stops at max_new_tokens, or once it has num_beams ended hypotheses and its best live one, ended at the
        next token, would score no better than the num_beams-th of them (log-probs only add up to less: exact
        for length_penalty <= 0). Only self states are reordered."""
        num_beams = check_int("num_beams", num_beams, 1, self.backend.vocab_size)
        check_max_new(max_new_tokens)
        if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or not np.isfinite(length_penalty):
            raise InputError(f"length_penalty must be a finite number, got {length_penalty!r}")
        state, logits = self.start(sources, rows_per_source=1)
        n = len(sources)
        beams: List[List[Tuple[List[int], float]]] = [[([], 0.0)] for _ in range(n)]
        finished: List[List[Tuple[List[int], float, int]]] = [[] for _ in range(n)]  # (tokens, score, n)
        live = list(range(n))  # the sources still decoding, in row-group order

        def normalised(score, count):
            return score / max(1, count) ** length_penalty

        def settled(src, best_live_score, live_length):
            """True once no live hypothesis of src can end above its num_beams-th best ended one."""
            if len(finished[src]) < num_beams:
                return False
            kth = sorted((normalised(sc, c) for _, sc, c in finished[src]), reverse=True)[num_beams - 1]
            # a live hypothesis of live_length tokens ends with at most the score it has now, live_length + 1
            # tokens or more counted: an exact bound where length_penalty <= 0; above 0 a longer ending could
            # still normalise better, and it is scored at live_length + 1 all the same (the usual heuristic:
            # bounded by max_new_tokens instead, beams would run on for many steps for rare gains)
            return normalised(best_live_score, live_length + 1) <= kth

        for step in range(max_new_tokens):
            if not np.isfinite(logits).all():
                raise NonFiniteError("beam search: logits contain NaN or infinity (the state or the weights are not finite)")
            logp = log_softmax(logits)
            per = state.rows_per_source
            parents, tokens, next_live = [], [], []
            for g, src in enumerate(live):
                rows = range(g * per, (g + 1) * per)
                totals = np.array([beams[src][r - g * per][1] for r in rows])[:, None] + logp[g * per:(g + 1) * per]
                order = np.argsort(-totals, axis=None, kind="stable")[: 2 * num_beams]
                chosen = []
                for flat in order:
                    parent, token = divmod(int(flat), logp.shape[1])
                    seq, score = beams[src][parent][0], float(totals[parent, token])
                    if score == -np.inf:  # only a padding row's children are left
                        break
                    if token == self.eos:
                        finished[src].append((seq, score, len(seq) + 1))
                        continue
                    chosen.append((g * per + parent, token, seq + [token], score))
                    if len(chosen) == num_beams:
                        break
                if not chosen or step == max_new_tokens - 1:
                    finished[src] += [(seq, score, len(seq)) for _, _, seq, score in chosen]
                    continue
                if settled(src, chosen[0][3], len(chosen[0][2])):
                    continue
                while len(chosen) < num_beams:  # keep every source at num_beams rows: padding that is never chosen
                    parent, token, seq, _ = chosen[-1]
                    chosen.append((parent, token, seq, -np.inf))
                beams[src] = [(seq, score) for _, _, seq, score in chosen]
                parents += [p for p, _, _, _ in chosen]
                tokens += [t for _, t, _, _ in chosen]
                next_live.append(g)
            if not next_live:
                break
            state = self.keep(state, parents, next_live)
            live = [live[g] for g in next_live]
            logits, state = self.step(tokens, state)
        results = []
        for src in range(n):
            ranked = sorted(finished[src], key=lambda c: -normalised(c[1], c[2]))[:num_beams]
            results.append([(seq, normalised(score, count)) for seq, score, count in ranked])
        return results
