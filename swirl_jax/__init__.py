"""swirl_jax: SWiRL (step-wise RL for multi-step tool use) in JAX and Flax NNX.

The public API. Names are imported on first use, so `import swirl_jax.models`
does not pull in TensorFlow (which seqio's vocabulary needs).
"""

import importlib

_EXPORTS = {
    "partitioning": ("swirl_jax.partitioning", None),
    "MeshConfig": ("swirl_jax.partitioning", "MeshConfig"),
    "make_mesh": ("swirl_jax.partitioning", "make_mesh"),
    "GemmaConfig": ("swirl_jax.models", "GemmaConfig"),
    "NAMED_CONFIGS": ("swirl_jax.models", "NAMED_CONFIGS"),
    "KVCache": ("swirl_jax.models", "KVCache"),
    "Transformer": ("swirl_jax.models", "Transformer"),
    "init_model": ("swirl_jax.models", "init_model"),
    "model_config": ("swirl_jax.models", "model_config"),
    "load_gemma3_270m": ("swirl_jax.checkpoints.embedded", "load_gemma3_270m"),
    "load_gguf": ("swirl_jax.checkpoints.gguf_import", "load_gguf"),
    "load_hf_checkpoint": ("swirl_jax.checkpoints.safetensors_import", "load_hf_checkpoint"),
    "export_hf": ("swirl_jax.checkpoints.safetensors_export", "export_hf"),
    "export_gguf": ("swirl_jax.checkpoints.gguf_export", "export_gguf"),
    "vocabulary_from_gguf": ("swirl_jax.checkpoints.tokenizer", "vocabulary_from_gguf"),
    "train_vocabulary": ("swirl_jax.checkpoints.vocabulary_training", "train_vocabulary"),
    "save_params": ("swirl_jax.checkpoints.orbax_io", "save_params"),
    "restore_params": ("swirl_jax.checkpoints.orbax_io", "restore_params"),
    "greedy_decode_uncached": ("swirl_jax.sampling.uncached", "greedy_decode_uncached"),
    "Sampler": ("swirl_jax.sampling.sampler", "Sampler"),
    "SamplingConfig": ("swirl_jax.sampling.sampler", "SamplingConfig"),
    "Calculator": ("swirl_jax.environment.calculator", "Calculator"),
    "BM25Search": ("swirl_jax.environment.search", "BM25Search"),
    "HttpSearch": ("swirl_jax.environment.search", "HttpSearch"),
    "EpisodeConfig": ("swirl_jax.environment.episode", "EpisodeConfig"),
    "EpisodeRunner": ("swirl_jax.environment.episode", "EpisodeRunner"),
    "build_task": ("swirl_jax.tasks", "build_task"),
    "RuleJudge": ("swirl_jax.rewards.rule_judge", "RuleJudge"),
    "ModelJudge": ("swirl_jax.rewards.model_judge", "ModelJudge"),
    "HttpJudge": ("swirl_jax.rewards.http_judge", "HttpJudge"),
    "judge_trajectories": ("swirl_jax.judging", "judge_trajectories"),
    "filter_trajectories": ("swirl_jax.data.filters", "filter_trajectories"),
    "demonstrations": ("swirl_jax.scripted_demonstrations", "demonstrations"),
    "NoiseConfig": ("swirl_jax.scripted_demonstrations", "NoiseConfig"),
    "prefix_shared_batch": ("swirl_jax.data.seqio_tasks", "prefix_shared_batch"),
    "losses": ("swirl_jax.training.losses", None),
    "Trainer": ("swirl_jax.training.trainer", "Trainer"),
    "TrainConfig": ("swirl_jax.training.trainer", "TrainConfig"),
    "OnlineConfig": ("swirl_jax.training.online", "OnlineConfig"),
    "OptimizerConfig": ("swirl_jax.training.optimizer", "OptimizerConfig"),
    "SftConfig": ("swirl_jax.training.objectives", "SftConfig"),
    "register_judged": ("swirl_jax.data.seqio_tasks", "register_judged"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'swirl_jax' has no attribute {name!r}")
  module_name, attr = _EXPORTS[name]
  module = importlib.import_module(module_name)
  value = module if attr is None else getattr(module, attr)
  globals()[name] = value
  return value


def __dir__():
  return __all__
