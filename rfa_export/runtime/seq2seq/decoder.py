"""Seq2SeqDecoder: sources in, text or token ids out, by greedy, sampled or beam-search decoding over any
Seq2SeqBackend."""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..backend import MAX_POSITION, InputError, NonFiniteError, as_token_array
from ..decoder import GenerationResult, check_max_new
from ..sampling import SamplingParams, check_int, check_sampling, check_seeds, log_softmax, sample_token
from ..tokenizer import ByteTokenizer, HuggingFaceTokenizer
from .backend import Seq2SeqBackend


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
