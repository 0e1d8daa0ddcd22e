"""swirl_jax: SWiRL (step-wise RL for multi-step tool use) in JAX and Flax NNX.

The public API; everything else is reachable through the submodules.
"""

from swirl_jax import partitioning
from swirl_jax.checkpoints.embedded import load_gemma3_270m
from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.orbax_io import restore_params, save_params
from swirl_jax.checkpoints.safetensors_import import load_hf_checkpoint
from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
from swirl_jax.models import NAMED_CONFIGS, GemmaConfig, Transformer, init_model, model_config
from swirl_jax.partitioning import MeshConfig, make_mesh
from swirl_jax.sampling import greedy_decode_uncached

__all__ = [
    "GemmaConfig", "MeshConfig", "NAMED_CONFIGS", "Transformer", "greedy_decode_uncached",
    "init_model", "load_gemma3_270m", "load_gguf", "load_hf_checkpoint", "make_mesh",
    "model_config", "partitioning", "restore_params", "save_params", "vocabulary_from_gguf",
]
