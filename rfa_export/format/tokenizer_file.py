"""A Hugging Face tokenizer.json stored with an export: checked against the model's vocabulary when it is
added, and recorded in the metadata with its digest (so an edited tokenizer is refused like an edited model)."""

from pathlib import Path
from typing import Any, Dict, Union

from .metadata import MetadataError
from .model_file import file_digest

TOKENIZER_FILE = "tokenizer.json"
END_OF_TEXT_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")


def describe_tokenizer(path: Union[str, Path], vocab_size: int) -> Dict[str, Any]:
    """{"file", "sha256", "vocab_size", "eos_token_id" (its end-of-text token, or None)} for the metadata; MetadataError for a file the tokenizers library does not
    read or whose ids do not fit the model."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: no such tokenizer file")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MetadataError("--tokenizer needs the tokenizers library: pip install tokenizers") from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
        size = tokenizer.get_vocab_size(with_added_tokens=True)
    except Exception as e:  # the library raises its own exception types
        raise MetadataError(f"{path}: not a tokenizer.json the tokenizers library reads "
                            f"({' '.join(str(e).split())[:200]})") from None
    if size > vocab_size:
        raise MetadataError(f"{path}: the tokenizer has {size} tokens, the model's vocabulary only {vocab_size}")
    eos = next((tokenizer.token_to_id(n) for n in END_OF_TEXT_NAMES if tokenizer.token_to_id(n) is not None), None)
    return {"file": TOKENIZER_FILE, "sha256": file_digest(path), "vocab_size": size, "eos_token_id": eos}
