"""Models with a Hugging Face tokenizer.json: a small byte-level BPE trained here on the bundled corpus, an
RFA model with that vocabulary, exported with --tokenizer and decoded as text by generate (onnxruntime and
torch), onnxruntime-genai and the runtime's incremental detokenizer; an encoder-decoder over the same vocabulary
translating text through its stored tokenizer."""

import json
import shutil

import numpy as np
import pytest
import torch

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers not installed")

from rfa_export.cli import main  # noqa: E402
from rfa_export.corpus import pydoc_topics_split  # noqa: E402
from rfa_export.format.metadata import MetadataError  # noqa: E402
from rfa_export.model import RFAConfig, RFALanguageModel  # noqa: E402
from rfa_export.model.checkpoint import save_checkpoint  # noqa: E402
from rfa_export.runtime import Decoder, OnnxRuntimeBackend, SamplingParams, TorchBackend  # noqa: E402
from rfa_export.runtime.tokenizer import HuggingFaceTokenizer  # noqa: E402

VOCAB = 600
PROMPTS = ["The import statement", "Exceptions are raised when", "é and ☃ are characters"]


def train_bpe(path, vocab_size=VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = pydoc_topics_split()[0].decode()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text[i:i + 10000] for i in range(0, 300000, 10000)], trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """(tokenizer.json, checkpoint, export dir with --tokenizer --genai)."""
    root = tmp_path_factory.mktemp("bpe")
    tokenizer = train_bpe(root / "tokenizer.json")
    torch.manual_seed(0)
    checkpoint = root / "bpe.pt"
    save_checkpoint(RFALanguageModel(RFAConfig(vocab_size=VOCAB, d_model=64, n_heads=2, n_layers=2, d_ffn=128,
                                               num_features=16, positional="none")), checkpoint)
    out = root / "out"
    assert main([str(checkpoint), "-o", str(out), "--tokenizer", str(tokenizer), "--genai", "-q"]) == 0
    return tokenizer, checkpoint, out


def test_the_export_carries_the_tokenizer(bpe_model):
    tokenizer, _, out = bpe_model
    assert (out / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    meta = json.loads((out / "rfa_export.json").read_text())
    assert meta["tokenizer"]["file"] == "tokenizer.json" and meta["tokenizer"]["vocab_size"] == VOCAB
    assert meta["tokenizer"]["eos_token_id"] == 0  # <|endoftext|>
    assert json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"] == 0


def test_generate_decodes_text_with_the_tokenizer(bpe_model, capsys):
    tokenizer, checkpoint, out = bpe_model
    reference = Decoder(TorchBackend(checkpoint), tokenizer=HuggingFaceTokenizer(tokenizer))
    sampling = SamplingParams(temperature=1.0, top_k=50, seed=3)
    for prompt in PROMPTS:
        want = reference.generate([prompt], 24, sampling)[0]
        assert want.text == reference.tokenizer.decode(want.tokens)  # the incremental pieces add up
        for argv in (["generate", str(out)], ["generate", "--backend", "torch", "--checkpoint", str(checkpoint),
                                              "--tokenizer", str(tokenizer)]):
            code = main([*argv, "--prompt", prompt, "--max-new-tokens", "24", "--temperature", "1.0", "--top-k", "50",
                         "--seed", "3"])
            got, _ = capsys.readouterr()
            assert code == 0 and got == want.text + "\n"


def test_incremental_text_never_splits_a_character(bpe_model):
    tokenizer = HuggingFaceTokenizer(bpe_model[0])
    text = "naïve café — ☃ snow, 雪 and ✓ done"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    pieces, inc = [], tokenizer.incremental_decoder()
    for i in ids:
        pieces.append(inc(i))
        assert "\ufffd" not in pieces[-1]
    assert "".join(pieces) == text
    # restore undoes feeds: a rewind in the middle of a character gives the same pieces again
    inc = tokenizer.incremental_decoder()
    head = "".join(inc(i) for i in ids[:5])
    saved = inc.state()
    first = [inc(i) for i in ids[5:9]]
    inc.restore(saved)
    assert [inc(i) for i in ids[5:9]] == first
    assert head + "".join(first) + "".join(inc(i) for i in ids[9:]) == text


def test_onnxruntime_genai_uses_the_stored_tokenizer(bpe_model):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai not installed")
    tokenizer, _, out = bpe_model
    ours = HuggingFaceTokenizer(tokenizer)
    model = og.Model(str(out))
    genai_tokenizer = og.Tokenizer(model)
    for prompt in PROMPTS:
        assert [int(i) for i in genai_tokenizer.encode(prompt)] == ours.encode(prompt)
    ids = ours.encode(PROMPTS[0])
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 15, do_sample=False, batch_size=1)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids], np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    want = Decoder(OnnxRuntimeBackend(out)).generate([PROMPTS[0]], 15)[0]
    assert list(generator.get_sequence(0))[len(ids):] == want.tokens
    assert genai_tokenizer.decode(generator.get_sequence(0)[len(ids):]) == want.text


def test_an_encoder_decoder_export_translates_text_with_its_tokenizer(bpe_model, tmp_path, capsys):
    """A seq2seq model over the BPE vocabulary (plus BOS and EOS after it), exported with --tokenizer: the source
    text is encoded and the output decoded through the stored tokenizer.json, the same on onnxruntime as on
    torch with the same file, and the same as the tokenizer's own encode and decode of the ids."""
    from rfa_export.model.checkpoint import save_seq2seq_checkpoint
    from rfa_export.model.seq2seq import RFASeq2Seq, RFASeq2SeqConfig
    from rfa_export.runtime.seq2seq import OnnxRuntimeSeq2SeqBackend, Seq2SeqDecoder

    tokenizer = bpe_model[0]
    torch.manual_seed(1)
    config = RFASeq2SeqConfig(src_vocab_size=VOCAB + 2, tgt_vocab_size=VOCAB + 2, bos_token_id=VOCAB,
                              eos_token_id=VOCAB + 1, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                              d_ffn=64, num_features=8)
    checkpoint, out = tmp_path / "s2s.pt", tmp_path / "s2s"
    save_seq2seq_checkpoint(RFASeq2Seq(config).eval(), checkpoint)
    assert main([str(checkpoint), "-o", str(out), "--tokenizer", str(tokenizer), "-q"]) == 0
    capsys.readouterr()
    meta = json.loads((out / "rfa_export.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == VOCAB and (out / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    decoder = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(out))
    ours = HuggingFaceTokenizer(tokenizer)
    sampling = SamplingParams(temperature=1.0, top_k=50, seed=3)
    for source in PROMPTS:
        assert decoder.encode_source(source) == ours.encode(source)
        result = decoder.generate([source], 12, sampling)[0]
        assert result.text and result.text == ours.decode([t for t in result.tokens if t < VOCAB])
        for argv in (["translate", str(out)], ["translate", "--backend", "torch", "--checkpoint", str(checkpoint),
                                               "--tokenizer", str(tokenizer)]):
            code = main([*argv, "--source", source, "--max-new-tokens", "12", "--temperature", "1.0", "--top-k", "50",
                         "--seed", "3"])
            got, _ = capsys.readouterr()
            assert code == 0 and got == result.text + "\n", (argv, got)


def test_tokenizer_problems_are_one_line_errors(bpe_model, tmp_path, capsys):
    tokenizer, checkpoint, out = bpe_model
    big = train_bpe(tmp_path / "big.json", vocab_size=VOCAB + 100)
    junk = tmp_path / "junk.json"
    junk.write_text('{"not": "a tokenizer"}')
    for path, message in ((big, f"the tokenizer has {VOCAB + 100} tokens, the model's vocabulary only {VOCAB}"),
                          (junk, "not a tokenizer.json the tokenizers library reads"),
                          (tmp_path / "absent.json", "no such tokenizer file")):
        code = main([str(checkpoint), "-o", str(tmp_path / "o"), "--tokenizer", str(path)])
        _, err = capsys.readouterr()
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
        assert not (tmp_path / "o" / "model.onnx").exists()
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "tokenizer.json").write_text((edited / "tokenizer.json").read_text().replace('"Ġthe"', '"Ġteh"', 1))
    with pytest.raises(MetadataError, match="tokenizer.json: modified after export"):
        OnnxRuntimeBackend(edited)
    code = main(["generate", str(out), "--tokenizer", str(tokenizer), "--prompt", "x"])
    _, err = capsys.readouterr()
    assert code == 1 and "an export carries its own tokenizer" in err
