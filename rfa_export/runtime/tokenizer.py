"""Byte-level text <-> ids for vocab-256 models (the bundled model); other vocabularies take token ids."""

import codecs
from typing import List, Sequence


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def incremental_decoder(self):
        """feed(id) -> the text it completes (UTF-8 sequences may span several bytes)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(bytes([int(token)]))
