"""Writes a model and its tokenizer as one GGUF file, the layout llama.cpp (and Ollama, LM Studio) run.

The inverse of `gguf_import`, for every family: Gemma's norms are stored as 1 + w, Llama's q and k
rows in llama.cpp's order (it rotates adjacent pairs), Llama 3's RoPE scaling as its per-frequency
divisors (`rope_freqs.weight`). The tokenizer goes in the metadata: Gemma's SentencePiece pieces
with their scores and types, or a tokenizer.json's byte-level BPE pieces, merges and the name of
its pre-tokenizer (llama.cpp knows pre-tokenizers by name only).

Tensors stream as in the HF export: each is gathered whole on the chips, then process 0 writes it
(the header, written first, needs only shapes), so one host holds one tensor at a time. Weights are
F32, F16, BF16 or Q8_0 (2-D tensors whose rows are whole 32-blocks; the others F16); norms and
divisors stay F32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import contextlib
import json
import os

import gguf
import jax
import numpy as np
from absl import logging
from flax import nnx
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from swirl_jax import atomic_io
from swirl_jax.checkpoints import gguf_bpe
from swirl_jax.checkpoints.gguf_import import block_names, gemma_query_scale, llama3_rope_divisors
from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
from swirl_jax.checkpoints.safetensors_export import gather_tensor, hf_model_type, hf_plan
from swirl_jax.checkpoints.tokenizer import CHAT_MARKERS, SentencePieceVocabulary
from swirl_jax.models.config import GemmaConfig, gemma2_layer_types, gemma3_layer_types
from swirl_jax.models.transformer import Transformer

DTYPES = ("float32", "float16", "bfloat16", "q8_0")
_ARCH = {"gemma2": "gemma2", "gemma3_text": "gemma3", "qwen3": "qwen3", "llama": "llama"}
_FILE_TYPES = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
               "bfloat16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_Q = gguf.GGMLQuantizationType
_STORED = {"float32": _Q.F32, "float16": _Q.F16, "bfloat16": _Q.BF16, "q8_0": _Q.Q8_0}


def gguf_arch(config: GemmaConfig) -> str:
  """llama.cpp's architecture name of a config, refusing what `gguf_import` would read back otherwise."""
  arch = _ARCH[hf_model_type(config)]
  if arch.startswith("gemma"):
    # llama.cpp fixes Gemma 3's local RoPE base at 10k and derives the query scale from the layer count.
    expected = gemma_query_scale(arch, config.num_layers, config.embed_dim, config.num_heads, config.head_dim)
    if config.query_pre_attn_scalar != expected:
      raise ValueError(f"export_gguf: query_pre_attn_scalar={config.query_pre_attn_scalar}; llama.cpp's {arch} "
                       f"uses {expected} for {config.num_layers} layers")
    if arch == "gemma3" and config.local_rope_base != 10_000.0:
      raise ValueError(f"export_gguf: local_rope_base={config.local_rope_base}; llama.cpp's gemma3 fixes it at 10000")
    # llama.cpp fixes the window pattern too (every 6th layer global in Gemma 3, every 2nd in Gemma 2).
    pattern = (gemma3_layer_types if arch == "gemma3" else gemma2_layer_types)(config.num_layers)
    if config.layer_types != pattern:
      raise ValueError(f"export_gguf: layer_types={config.layer_types}; llama.cpp's {arch} runs {pattern}")
    if arch == "gemma3" and (config.attn_logit_softcap or config.final_logit_softcap):
      raise ValueError("export_gguf: soft-capped logits; llama.cpp's gemma3 has none")
  return arch


def context_length(config: GemmaConfig, arch: str) -> int:
  """The context the family's released models of this size declare (llama.cpp's default context)."""
  if arch == "gemma3":
    return 32_768 if config.num_layers in (18, 26) else 131_072  # 270M and 1B, then 4B to 27B
  if arch == "llama":
    return 131_072 if config.llama3_rope else 8192  # Llama 3.1 and 3.2; Llama 3
  return {"gemma2": 8192, "qwen3": 40_960}[arch]


def _tensor_type(shape: tuple[int, ...], dtype: str, name: str) -> gguf.GGMLQuantizationType:
  if len(shape) == 1 or name == "rope_freqs.weight":
    return _Q.F32
  if dtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]:
    return _Q.F16
  return _STORED[dtype]


def _stored_bytes(shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> tuple[tuple[int, ...], int]:
  """(the byte shape `add_tensor_info` takes for a quantized type, or `shape`; the tensor's bytes)."""
  if kind in (_Q.F32, _Q.F16):
    return shape, int(np.prod(shape)) * (4 if kind == _Q.F32 else 2)
  byte_shape = gguf.quant_shape_to_byte_shape(shape, kind)
  return tuple(byte_shape), int(np.prod(byte_shape))


def _stored(array: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
  if kind == _Q.F32:
    return np.ascontiguousarray(array, np.float32)
  if kind == _Q.F16:
    return np.ascontiguousarray(array, np.float16)
  return gguf.quants.quantize(np.ascontiguousarray(array, np.float32), kind)


def gguf_name(hf_name: str, arch: str) -> tuple[str, str | None]:
  """(llama.cpp's name of an HF tensor name, its block kind or None)."""
  whole = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  if hf_name in whole:
    return whole[hf_name], None
  to_gguf = {hf: kind for kind, hf in block_names(arch).items()}
  layer, rest = hf_name[len("model.layers."):].split(".", 1)
  kind = to_gguf[rest[:-len(".weight")]]
  return f"blk.{layer}.{kind}.weight", kind


def to_llama_cpp(array: np.ndarray, name: str, kind: str | None, arch: str, config: GemmaConfig) -> np.ndarray:
  """An HF-layout tensor (GGUF `name`, block `kind`) as llama.cpp stores it."""
  if arch.startswith("gemma") and name.endswith("norm.weight"):
    return array + 1.0
  if arch == "llama" and kind in ("attn_q", "attn_k"):
    heads = config.num_heads if kind == "attn_q" else config.num_kv_heads
    return array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
  return array


def add_model_metadata(writer: gguf.GGUFWriter, config: GemmaConfig, arch: str, dtype: str) -> None:
  """The architecture's metadata llama.cpp reads (and `gguf_import.config_from_gguf` reads back)."""
  writer.add_file_type(int(_FILE_TYPES[dtype]))
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
  writer.add_block_count(config.num_layers)
  writer.add_context_length(context_length(config, arch))
  writer.add_embedding_length(config.embed_dim)
  writer.add_feed_forward_length(config.mlp_dim)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_rope_freq_base(config.global_rope_base)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  if arch in ("qwen3", "llama"):
    writer.add_rope_dimension_count(config.head_dim)
    return
  writer.add_sliding_window(config.sliding_window)
  writer.add_sliding_window_pattern([t == "local" for t in config.layer_types])
  if arch == "gemma2":
    writer.add_attn_logit_softcapping(config.attn_logit_softcap)
    writer.add_final_logit_softcapping(config.final_logit_softcap)
  elif config.global_rope_scale != 1.0:
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.global_rope_scale)


# A writer call: the `gguf.GGUFWriter` method's name and its arguments. The tokenizer's metadata is
# built as these on every process (so every process refuses a bad tokenizer before any collective),
# then process 0 makes them.
WriterCall = tuple[str, tuple]
_CONTROL, _USER, _UNUSED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED), int(gguf.TokenType.UNUSED)


def _padded(pieces: list[str], types: list[int], rows: int) -> None:
  """llama.cpp's "[PAD<id>]" pieces up to the embedding's rows (typed unused)."""
  for i in range(len(pieces), rows):
    pieces.append(f"[PAD{i}]")
    types.append(_UNUSED)


def sentencepiece_metadata(vocab: SentencePieceVocabulary, rows: int) -> list[WriterCall]:
  """Gemma's tokenizer as llama.cpp's converter writes it: the pieces with their scores; the special
  pieces and chat markers typed control (our reader types `<unk>` unknown and the markers
  user-defined, for SentencePiece); user-defined pieces with literal spaces; no space put before text."""
  proto = spm_pb2.ModelProto()
  proto.ParseFromString(vocab.sp_model)
  spec = proto.trainer_spec
  specials = {getattr(spec, f"{role}_id") for role in ("bos", "eos", "unk", "pad")}
  pieces, scores, types = [], [], []
  for i, entry in enumerate(proto.pieces):
    user = entry.type == spm_pb2.ModelProto.SentencePiece.USER_DEFINED
    pieces.append(entry.piece.replace("\u2581", " ") if user else entry.piece)
    scores.append(entry.score)
    types.append(_CONTROL if i in specials or entry.piece in CHAT_MARKERS else int(entry.type))
  if len(pieces) > rows:
    raise ValueError(f"export_gguf: the tokenizer has {len(pieces)} pieces, past the model's {rows} embedding rows")
  _padded(pieces, types, rows)
  scores += [0.0] * (len(pieces) - len(scores))
  calls = [("add_tokenizer_model", ("llama",)), ("add_token_list", (pieces,)), ("add_token_scores", (scores,)),
           ("add_token_types", (types,))]
  calls += [(f"add_{role}_token_id", (getattr(spec, f"{role}_id"),)) for role in ("bos", "eos", "unk", "pad")
            if getattr(spec, f"{role}_id") >= 0]
  return calls + [("add_add_bos_token", (True,)), ("add_add_eos_token", (False,)),
                  ("add_add_space_prefix", (bool(proto.normalizer_spec.add_dummy_prefix),))]


def _pre_tokenizer_name(tokenizer_json: dict, source: str) -> str:
  """llama.cpp's name of a tokenizer.json's pre-tokenizer (a split pattern, then bytes to printables)."""
  pre = tokenizer_json.get("pre_tokenizer") or {}
  steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
  pattern = next((s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"), None)
  for name, known in gguf_bpe.SPLIT_PATTERNS.items():
    if pattern == known:
      return name
  raise ValueError(f"{source}: the pre-tokenizer splits by {pattern!r}, none that llama.cpp names "
                   f"({', '.join(gguf_bpe.SPLIT_PATTERNS)}); llama.cpp would tokenize differently")


def bpe_metadata(vocab: HFTokenizerVocabulary, rows: int) -> list[WriterCall]:
  """A tokenizer.json's byte-level BPE as llama.cpp's converter writes it (special added tokens
  typed control, the others user-defined, ids with no token "[PAD<id>]")."""
  source = os.path.join(vocab.directory, "tokenizer.json")
  tokenizer_json = json.loads(vocab.tokenizer.to_str())
  model = tokenizer_json.get("model") or {}
  if model.get("type") != "BPE" or model.get("byte_fallback"):
    raise ValueError(f"{source}: model type {model.get('type')!r}; llama.cpp's 'gpt2' tokenizer is byte-level BPE")
  pre = _pre_tokenizer_name(tokenizer_json, source)
  normalizer = (tokenizer_json.get("normalizer") or {}).get("type")
  if normalizer not in (None, "NFC" if pre == "qwen2" else None):
    raise ValueError(f"{source}: normalizer {normalizer!r}; llama.cpp's {pre!r} tokenizer does not apply it")
  by_id = {i: (piece, int(gguf.TokenType.NORMAL)) for piece, i in model["vocab"].items()}
  for added in tokenizer_json.get("added_tokens", []):
    by_id[added["id"]] = (added["content"], _CONTROL if added["special"] else _USER)
  if max(by_id) >= rows:
    raise ValueError(f"{source}: token {max(by_id)} is past the model's {rows} embedding rows")
  pieces = [by_id.get(i, (f"[PAD{i}]", _UNUSED))[0] for i in range(max(by_id) + 1)]
  types = [by_id.get(i, (None, _UNUSED))[1] for i in range(max(by_id) + 1)]
  _padded(pieces, types, rows)
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  calls = [("add_tokenizer_model", ("gpt2",)), ("add_tokenizer_pre", (pre,)), ("add_token_list", (pieces,)),
           ("add_token_types", (types,)), ("add_token_merges", (merges,)), ("add_eos_token_id", (vocab.eos_id,)),
           ("add_add_bos_token", (vocab.bos_id is not None,))]
  if vocab.bos_id is not None:
    calls.append(("add_bos_token_id", (vocab.bos_id,)))
  if vocab.pad_token_id is not None:
    calls.append(("add_pad_token_id", (vocab.pad_token_id,)))
  return calls + ([("add_chat_template", (vocab.chat_template,))] if vocab.chat_template else [])


def export_gguf(model: Transformer, path: str, vocab: SentencePieceVocabulary | HFTokenizerVocabulary,
                dtype: str = "bfloat16") -> str:
  """Writes `model` and `vocab` to the GGUF file `path` (weights in `dtype`: float32, float16,
  bfloat16 or q8_0); returns the path. Collective on a multi-host mesh: every process calls it and
  checks the same things before the first gather; process 0 writes the file (the others return once
  their part of the last gather is done, perhaps before the file is in place)."""
  if dtype not in DTYPES:
    raise ValueError(f"export_gguf(dtype={dtype!r}): use one of {DTYPES}")
  config = model.config
  arch = gguf_arch(config)
  tokenizer = (bpe_metadata(vocab, config.vocab_size) if isinstance(vocab, HFTokenizerVocabulary)
               else sentencepiece_metadata(vocab, config.vocab_size))
  # (tensor, its GGUF name, block kind, stored type) in the order they are written
  named = [(tensor, name, block_kind, _tensor_type(tensor.shape, dtype, name))
           for tensor in hf_plan(model) for name, block_kind in [gguf_name(tensor.name, arch)]]
  writer_process = jax.process_index() == 0
  variables = dict(nnx.to_flat_state(nnx.state(model)))
  divisors = (llama3_rope_divisors(config.global_rope_base, config.head_dim, config.llama3_rope).astype(np.float32)
              if config.llama3_rope is not None else None)
  with (atomic_io.atomic_path(path) if writer_process else contextlib.nullcontext()) as tmp:
    writer = gguf.GGUFWriter(tmp, arch) if writer_process else None
    try:
      if writer is not None:
        add_model_metadata(writer, config, arch, dtype)
        for method, arguments in tokenizer:
          getattr(writer, method)(*arguments)
        if divisors is not None:
          writer.add_tensor_info("rope_freqs.weight", divisors.shape, np.float32, divisors.nbytes)
        for tensor, name, _, kind in named:
          byte_shape, nbytes = _stored_bytes(tensor.shape, kind)
          plain = {_Q.F32: np.float32, _Q.F16: np.float16}
          writer.add_tensor_info(name, byte_shape, plain.get(kind, np.uint8), nbytes,
                                 raw_dtype=None if kind in plain else kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        if divisors is not None:
          writer.write_tensor_data(divisors)
      for number, (tensor, name, block_kind, kind) in enumerate(named):
        array = gather_tensor(variables, tensor, "float32", writer_process)
        if writer is not None:
          writer.write_tensor_data(_stored(to_llama_cpp(array, name, block_kind, arch, config), kind))
          del array
        if (number + 1) % 50 == 0:
          logging.info("export_gguf: %d of %d tensors", number + 1, len(named))
      if writer is not None:
        for f in writer.fout or []:
          f.flush()
          os.fsync(f.fileno())
    finally:
      if writer is not None:
        writer.close()
  return path
