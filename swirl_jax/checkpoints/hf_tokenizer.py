"""The vocabulary of a Qwen3 or Llama 3 checkpoint: its `tokenizer.json` (byte-level BPE), read by
the `tokenizers` library, as a seqio vocabulary that also implements the library's `Vocabulary`.

What a run needs beyond text <-> ids comes from the tokenizer's own files, not from us:
- `bos_id`, `eos_id` from `tokenizer_config.json`'s `bos_token` / `eos_token` (Qwen has no BOS:
  `bos_id` is None, and no BOS is put before a prompt);
- `stop_ids` from `generation_config.json`'s `eos_token_id` (Llama 3.1 lists three ids);
- `chat_format` from the chat template's markers: ChatML (`<|im_start|>`, Qwen) or Llama 3's header
  tokens (`<|start_header_id|>`).

Special tokens written in text (`<|im_end|>`) encode to their single ids, as the chat template
writes them. seqio reserves id 0 for padding; in a byte-level BPE id 0 is a real token (`!`), so do
not let seqio pad text features of this vocabulary (the library's tasks carry token ids through
`PassThroughVocabulary`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from swirl_jax.checkpoints import chat_formats

FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
         "chat_template.jinja")


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno}: {e.msg}") from None


def _token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def chat_template(directory: str, config: dict) -> str | None:
  """The chat template: chat_template.jinja where there is one (newer HF checkpoints), else
  tokenizer_config.json's `chat_template` (of a list of named templates, the one named "default")."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):
    template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
  return template if isinstance(template, str) else None


class HFTokenizerVocabulary(seqio.Vocabulary):
  """`tokenizer.json` and its configs in `directory` (an HF checkpoint directory)."""

  def __init__(self, directory: str):
    super().__init__(extra_ids=0)
    self.directory = directory
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{directory}: tokenizer.json is missing (needed for the vocabulary)")
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # noqa: BLE001 - the library's own parse error, named with the file
      raise ValueError(f"{path}: not a tokenizers file ({error})") from None
    # What equality and hashing compare (seqio hashes vocabularies): a digest, not a second copy.
    self._digest = hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json(config_path)
    generation = _read_json(os.path.join(directory, "generation_config.json"))
    self._bos_id = self._id_of(_token_text(config.get("bos_token")), config_path, "bos_token")
    self._eos_id = self._id_of(_token_text(config.get("eos_token")), config_path, "eos_token")
    self.pad_token_id = self._id_of(_token_text(config.get("pad_token")), config_path, "pad_token")
    if self._eos_id is None:
      raise ValueError(f"{config_path}: eos_token is missing (a turn would never end)")
    stops = generation.get("eos_token_id", [])
    self.stop_ids = tuple(int(i) for i in (stops if isinstance(stops, list) else [stops]))
    self.chat_template = chat_template(directory, config)
    template = self.chat_template or ""
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    if "<|im_start|>" in template or ("<|im_start|>" in vocab and "<|start_header_id|>" not in vocab):
      self.chat_format = chat_formats.CHATML
    elif "<|start_header_id|>" in template or "<|start_header_id|>" in vocab:
      self.chat_format = chat_formats.LLAMA3
    else:
      raise ValueError(f"{directory}: the chat template uses neither ChatML (<|im_start|>) nor Llama 3's "
                       "header tokens (<|start_header_id|>); swirl_jax knows those and Gemma's")
    fmt = self.chat_format
    for special in re.findall(r"<\|[a-z_]+\|>", fmt.start_user + fmt.start_model + fmt.end_turn):
      if special not in vocab:
        raise ValueError(f"{path}: the {fmt.name} marker {special!r} is not a token")

  def _id_of(self, token: str | None, source: str, field: str) -> int | None:
    if token is None:
      return None
    found = self.tokenizer.token_to_id(token)
    if found is None:
      raise ValueError(f"{source}: {field} {token!r} is not in tokenizer.json")
    return int(found)

  # -- the library's Vocabulary ------------------------------------------------

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def piece_count(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def _base_vocab_size(self) -> int:
    return self.piece_count

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def decode(self, ids) -> str:
    """Every id's text. (seqio's `decode` stops at the first EOS: Qwen's EOS, <|im_end|>, ends every
    turn, so a transcript would lose all but its first.)"""
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy().tolist()
    return self._decode(ids)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """As `decode`, in TensorFlow (padding, id 0 here, dropped as seqio drops it)."""
    return self._decode_tf(ids)

  # -- seqio's TensorFlow side -------------------------------------------------

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def encode(text):  # a scalar string arrives as a 0-d object array of bytes
      return np.asarray(self._encode(np.asarray(text).item().decode("utf-8")), np.int32)
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def decode(values):
      return self._decode([i for i in values.tolist() if i != self.pad_id]).encode("utf-8")
    text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    return tf.ensure_shape(text, [])

  def __eq__(self, other) -> bool:
    return isinstance(other, HFTokenizerVocabulary) and self._digest == other._digest

  def __hash__(self) -> int:
    return hash(self._digest)

  def files(self) -> dict[str, str]:
    """The tokenizer's files in its directory (an export copies them beside the weights)."""
    return {name: os.path.join(self.directory, name) for name in FILES
            if os.path.exists(os.path.join(self.directory, name))}
