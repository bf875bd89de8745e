"""The parameter layout an RFA model shares with its softmax baseline: embeddings, blocks, final LayerNorm and
LM head under the same names, shapes and initialisation order, so that the two differ only in attention."""

from torch import nn


def _embedding(vocab_size: int, d_model: int) -> nn.Embedding:
    embed = nn.Embedding(vocab_size, d_model)
    nn.init.normal_(embed.weight, std=d_model ** -0.5)
    return embed


def _head(module: nn.Module, config, vocab_size: int, embed: nn.Embedding) -> None:
    module.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
    module.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)
    if config.tie_embeddings:
        module.lm_head.weight = embed.weight


def init_lm_layout(module: nn.Module, config, make_block) -> None:
    """module.embed, .drop, .blocks (config.n_layers of make_block(config)), .ln_f and .lm_head."""
    module.config = config
    module.embed = _embedding(config.vocab_size, config.d_model)
    module.drop = nn.Dropout(config.dropout)
    module.blocks = nn.ModuleList(make_block(config) for _ in range(config.n_layers))
    _head(module, config, config.vocab_size, module.embed)


def init_seq2seq_layout(module: nn.Module, config, make_encoder_block, make_decoder_block) -> None:
    """module.src_embed, .tgt_embed (the same module with a shared vocabulary), .drop, .encoder, .ln_encoder,
    .decoder, .ln_f and .lm_head."""
    module.config = config
    module.src_embed = _embedding(config.src_vocab_size, config.d_model)
    module.tgt_embed = module.src_embed if config.shared_vocab else _embedding(config.tgt_vocab_size, config.d_model)
    module.drop = nn.Dropout(config.dropout)
    module.encoder = nn.ModuleList(make_encoder_block(config) for _ in range(config.n_encoder_layers))
    module.ln_encoder = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
    module.decoder = nn.ModuleList(make_decoder_block(config) for _ in range(config.n_decoder_layers))
    _head(module, config, config.tgt_vocab_size, module.tgt_embed)
