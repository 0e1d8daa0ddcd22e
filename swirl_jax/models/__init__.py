"""Gemma-family decoder: configs, layers, the transformer."""

from swirl_jax.models.config import NAMED_CONFIGS, GemmaConfig, model_config
from swirl_jax.models.transformer import KVCache, Transformer, abstract_model, init_model
