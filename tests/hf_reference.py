"""Tiny random Gemma 2, Gemma 3, Qwen3 and Llama 3 models built with transformers (torch), the reference."""

import numpy as np
import torch
import transformers

from swirl_jax.models.config import GemmaConfig


def hf_config(cfg: GemmaConfig):
  common = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      sliding_window=cfg.sliding_window, query_pre_attn_scalar=int(cfg.query_pre_attn_scalar),
      layer_types=["full_attention" if t == "global" else "sliding_attention" for t in cfg.layer_types],
      attn_logit_softcapping=cfg.attn_logit_softcap, final_logit_softcapping=cfg.final_logit_softcap,
      rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=4096, tie_word_embeddings=True)
  if cfg.use_qk_norm:
    return transformers.Gemma3TextConfig(
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": cfg.global_rope_base},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.local_rope_base}},
        **common)
  return transformers.Gemma2Config(
      rope_parameters={"rope_type": "default", "rope_theta": cfg.global_rope_base}, **common)


def hf_dense_config(cfg: GemmaConfig):
  """transformers' Qwen3 (QK-norm) or Llama config of a config of ours with Qwen3's or Llama's switches."""
  common = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=4096,
      tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu")
  if cfg.use_qk_norm:
    return transformers.Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": cfg.global_rope_base},
                                    **common)
  rope = {"rope_type": "default", "rope_theta": cfg.global_rope_base}
  if cfg.llama3_rope is not None:
    factor, low, high, original = cfg.llama3_rope
    rope.update(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                original_max_position_embeddings=original)
  return transformers.LlamaConfig(rope_parameters=rope, **common)


def random_hf_model(cfg: GemmaConfig, seed: int = 0):
  """An eager-attention HF model whose every weight (norms too) is random."""
  torch.manual_seed(seed)
  dense = not cfg.post_norms  # Qwen3 or Llama
  hf_cfg = hf_dense_config(cfg) if dense else hf_config(cfg)
  hf_cfg._attn_implementation = "eager"
  if dense:
    cls = transformers.Qwen3ForCausalLM if cfg.use_qk_norm else transformers.LlamaForCausalLM
  else:
    cls = transformers.Gemma3ForCausalLM if cfg.use_qk_norm else transformers.Gemma2ForCausalLM
  model = cls(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.3 if "norm" in name else 0.2
      # A plain norm weight (Qwen3, Llama) scales by w itself, Gemma's by 1 + w: both near 1.
      offset = 1.0 if dense and "norm" in name else 0.0
      p.copy_(torch.randn_like(p) * scale + offset)
  return model


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(attention_mask).long(),
                position_ids=torch.from_numpy(positions).long())
  return out.logits.float().numpy()
