"""Rebuilds Qwen3's and Llama 3's byte-level BPE tokenizer from a GGUF file's metadata, as the HF files
`HFTokenizerVocabulary` reads (tokenizer.json, tokenizer_config.json, generation_config.json).

llama.cpp's converter keeps the pieces (`tokenizer.ggml.tokens`, byte-level strings such as "Ġthe"),
their types, the merges, the special token ids and the chat template; the pre-tokenizer is named, not
stored (`tokenizer.ggml.pre`), so we write the named one's split pattern: digits one at a time for
"qwen2" (Qwen2 and Qwen3), up to three for "llama-bpe" (Llama 3), which also takes a whole word that
is a piece before merging (HF's `ignore_merges`). Control pieces become special added tokens, so
"<|im_end|>" written in text is one id, as the chat template writes it.

Stop ids: the file's EOS, EOT and EOM ids, and the control pieces llama.cpp itself ends generation
at ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", ...): for Qwen3 and Llama 3.1 these are the ids of
their generation_config.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import gguf
import tokenizers

from swirl_jax.checkpoints.gguf_import import metadata_field
from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary

_TYPE_CONTROL, _TYPE_USER, _TYPE_UNUSED = 3, 4, 5
# The split patterns of the pre-tokenizers llama.cpp names (as in each family's tokenizer.json).
_LETTERS_AND_MARKS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_PUNCTUATION_AND_SPACE = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_PATTERNS = {
    "qwen2": _LETTERS_AND_MARKS + r"\p{N}" + _PUNCTUATION_AND_SPACE,
    "llama-bpe": _LETTERS_AND_MARKS + r"\p{N}{1,3}" + _PUNCTUATION_AND_SPACE,
}
END_OF_GENERATION = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")


def split_pre_tokenizer(pattern: str) -> dict:
  """tokenizer.json's pre-tokenizer: the pattern's pieces kept whole, then bytes mapped to printables."""
  return {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
      {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def hf_tokenizer_files(reader: gguf.GGUFReader, source: str) -> dict[str, dict]:
  """{file name: JSON content} of the HF tokenizer a GGUF file with `tokenizer.ggml.model` "gpt2"
  describes."""
  model_kind = metadata_field(reader, "tokenizer.ggml.model", source, None)
  if model_kind != "gpt2":
    raise ValueError(f"{source}: tokenizer.ggml.model={model_kind!r}; expected 'gpt2' (byte-level BPE)")
  pre = metadata_field(reader, "tokenizer.ggml.pre", source, "default")
  if pre not in SPLIT_PATTERNS:
    raise ValueError(f"{source}: tokenizer.ggml.pre={pre!r}; swirl_jax reads {' and '.join(SPLIT_PATTERNS)} "
                     "(Qwen3's and Llama 3's)")
  pieces = metadata_field(reader, "tokenizer.ggml.tokens", source)
  types = metadata_field(reader, "tokenizer.ggml.token_type", source)
  merges = metadata_field(reader, "tokenizer.ggml.merges", source)
  if len(pieces) != len(types):
    raise ValueError(f"{source}: {len(pieces)} tokens but {len(types)} token types")
  pairs = []
  for i, merge in enumerate(merges):
    parts = merge.split(" ")
    if len(parts) != 2 or not all(parts):
      raise ValueError(f"{source}: tokenizer.ggml.merges[{i}]={merge!r} is not two pieces and a space")
    pairs.append(parts)
  vocab, added = {}, []
  for i, (piece, kind) in enumerate(zip(pieces, types)):
    if kind == _TYPE_UNUSED:  # llama.cpp's "[PAD<id>]" rows past the tokenizer: no token, as in HF's files
      continue
    if kind in (_TYPE_CONTROL, _TYPE_USER):
      added.append({"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
                    "normalized": False, "special": kind == _TYPE_CONTROL})
    elif vocab.setdefault(piece, i) != i:
      raise ValueError(f"{source}: tokenizer.ggml.tokens[{i}]={piece!r} repeats token {vocab[piece]}")

  def token_id(role: str) -> int | None:
    found = metadata_field(reader, f"tokenizer.ggml.{role}_token_id", source, None)
    if found is not None and (not 0 <= int(found) < len(pieces) or types[int(found)] == _TYPE_UNUSED):
      raise ValueError(f"{source}: tokenizer.ggml.{role}_token_id={found} is not one of the {len(pieces)} tokens"
                       " (or is an unused row)")
    return None if found is None else int(found)

  bos, eos, pad = token_id("bos"), token_id("eos"), token_id("padding")
  if eos is None:
    raise ValueError(f"{source}: metadata field 'tokenizer.ggml.eos_token_id' is missing (a turn would never end)")
  # Without the field, llama.cpp puts a BOS first for Llama 3's tokenizer and not for Qwen's.
  adds_bos = bool(metadata_field(reader, "tokenizer.ggml.add_bos_token", source, pre == "llama-bpe"))
  stops = {i for i in (eos, token_id("eot"), token_id("eom")) if i is not None}
  stops |= {a["id"] for a in added if a["special"] and a["content"] in END_OF_GENERATION}
  tokenizer = {
      "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
      "normalizer": {"type": "NFC"} if pre == "qwen2" else None,
      "pre_tokenizer": split_pre_tokenizer(SPLIT_PATTERNS[pre]),
      "post_processor": None,
      "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": pre == "llama-bpe", "vocab": vocab, "merges": pairs}}
  if adds_bos and bos is not None:  # transformers' encode puts the BOS first, as the file says
    single = [{"SpecialToken": {"id": pieces[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing", "single": single,
        "pair": single + [{"SpecialToken": {"id": pieces[bos], "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {pieces[bos]: {"id": pieces[bos], "ids": [bos], "tokens": [pieces[bos]]}}}
  config = {"bos_token": pieces[bos] if adds_bos and bos is not None else None, "eos_token": pieces[eos],
            "pad_token": None if pad is None else pieces[pad], "add_bos_token": adds_bos,
            "chat_template": metadata_field(reader, "tokenizer.chat_template", source, None),
            "tokenizer_class": "PreTrainedTokenizerFast"}
  return {"tokenizer.json": tokenizer, "tokenizer_config.json": config,
          "generation_config.json": {"eos_token_id": sorted(stops)}}


def _check_ids(tokenizer_json: dict, source: str) -> None:
  """Every piece at its id in the file: the tokenizers library numbers added tokens after the BPE
  pieces, whatever ids tokenizer.json gives them, so pieces interleaved otherwise would move."""
  built = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
  pieces = {**tokenizer_json["model"]["vocab"], **{a["content"]: a["id"] for a in tokenizer_json["added_tokens"]}}
  moved = [(piece, i) for piece, i in pieces.items() if built.token_to_id(piece) != i]
  if moved:
    piece, i = moved[0]
    raise ValueError(f"{source}: tokenizer.ggml.tokens[{i}]={piece!r} would be token {built.token_to_id(piece)} "
                     f"(and {len(moved) - 1} more moved): its control and user-defined pieces must follow the "
                     "BPE pieces")


def bpe_vocabulary_from_gguf(path: str, cache_dir: str | None = None,
                             reader: gguf.GGUFReader | None = None) -> HFTokenizerVocabulary:
  """An `HFTokenizerVocabulary` for the byte-level BPE tokenizer inside a GGUF file.

  Its files are written once to `cache_dir` (default: beside the GGUF file), in a directory named by
  the hash of their content; processes that write it at once each finish, and one copy stays."""
  files = hf_tokenizer_files(reader or gguf.GGUFReader(path), path)
  _check_ids(files["tokenizer.json"], path)
  text = {name: json.dumps(content, ensure_ascii=False, indent=1) for name, content in files.items()}
  digest = hashlib.sha256(json.dumps(text, sort_keys=True).encode("utf-8")).hexdigest()[:16]
  cache_dir = cache_dir or os.path.dirname(os.path.abspath(path))
  directory = os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.tokenizer")
  if not os.path.isdir(directory):
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=cache_dir)
    try:
      for name, content in text.items():
        with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
          f.write(content)
      os.rename(staging, directory)
    except OSError:
      if not os.path.isdir(directory):  # not another process's copy, landed first: a real failure
        raise
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  return HFTokenizerVocabulary(directory)
