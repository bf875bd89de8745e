"""Text <-> ids: byte-level for vocab-256 models (the bundled model), a Hugging Face tokenizer.json for the
others; without either, models take token ids."""

import codecs
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .backend import InputError


class IncrementalText:
    """feed(id) -> the text it completes (a UTF-8 character may span several tokens). state() and
    restore() let a caller undo feeds (a decoding step that failed as a whole)."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token: int) -> str:
        return self._decoder.decode(bytes([int(token)]))

    def state(self):
        return self._decoder.getstate()

    def restore(self, state) -> None:
        self._decoder.setstate(state)


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> List[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise InputError(f"text is not valid Unicode ({e.reason} at position {e.start})") from None

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalText:
        return IncrementalText()


class IncrementalTokenText:
    """The text each new token completes, for subword tokenizers whose tokens may split a character: the
    tail of the sequence is decoded again and only the new, complete text is given out (no trailing U+FFFD)."""

    def __init__(self, tokenizer: "HuggingFaceTokenizer"):
        self._tokenizer = tokenizer
        self._tokens: List[int] = []
        self._prefix = 0  # tokens before this index have been given out and are only context
        self._read = 0  # tokens before this index have been given out

    def __call__(self, token: int) -> str:
        self._tokens.append(int(token))
        before = self._tokenizer.decode(self._tokens[self._prefix:self._read])
        after = self._tokenizer.decode(self._tokens[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self._prefix, self._read = self._read, len(self._tokens)
        return after[len(before):]

    def state(self):
        return len(self._tokens), self._prefix, self._read

    def restore(self, state) -> None:
        n, self._prefix, self._read = state
        del self._tokens[n:]


class HuggingFaceTokenizer:
    """A Hugging Face tokenizer.json (the `tokenizers` library): encode without adding special tokens,
    decode without them."""

    def __init__(self, path: Union[str, Path]):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InputError("this model has a tokenizer.json: pip install tokenizers (or 'rfa-export[tokenizers]')") from None
        self.path = Path(path)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises its own exception types
            raise InputError(f"{self.path}: not a tokenizer.json the tokenizers library reads "
                             f"({' '.join(str(e).split())[:200]})") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> List[int]:
        try:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        except Exception as e:
            raise InputError(f"text could not be tokenized ({' '.join(str(e).split())[:200]})") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def incremental_decoder(self) -> IncrementalTokenText:
        return IncrementalTokenText(self)

    def special_token_id(self, *names: str) -> Optional[int]:
        """The id of the first of these special tokens the tokenizer has (e.g. an end-of-text token)."""
        for name in names:
            token = self._tokenizer.token_to_id(name)
            if token is not None:
                return int(token)
        return None


END_OF_TEXT_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


def load_tokenizer(path: Union[str, Path, None], vocab_size: int):
    """The tokenizer of a model: a tokenizer.json (checked against the model's vocabulary), the byte-level
    one for vocab-256 models without one, or None (token ids only)."""
    if path is not None:
        tokenizer = HuggingFaceTokenizer(path)
        if tokenizer.vocab_size > vocab_size:
            raise InputError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model only {vocab_size}")
        return tokenizer
    return ByteTokenizer() if vocab_size == 256 else None
