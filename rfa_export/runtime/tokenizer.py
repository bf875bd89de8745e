"""Byte-level text <-> ids for vocab-256 models (the bundled model); other vocabularies take token ids."""

import codecs
from typing import List, Sequence

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
