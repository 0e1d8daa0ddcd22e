"""Rebuilds Gemma's SentencePiece tokenizer from GGUF metadata, as a seqio vocabulary (and hands a
byte-level BPE tokenizer, Qwen3's or Llama 3's, to gguf_bpe.py).

GGUF carries the pieces, scores and types of the original model. We write a
SentencePiece ModelProto: BPE with byte fallback, no dummy prefix, whitespace
escaped as U+2581, identity normalization. Two repairs (docs/design.md, decision 7):
`<unk>` is typed control in the file, which TF-Text's SentencePiece op rejects,
so it becomes UNKNOWN; and the special pieces are named in the trainer spec so
that `eos_id` and friends resolve. User-defined pieces (runs of spaces) get
their spaces escaped back, as SentencePiece matches them after escaping. The
chat markers `<start_of_turn>` and
`<end_of_turn>` become user-defined pieces, so that prompt text containing them
encodes to their single ids and decoding shows them.
"""

from __future__ import annotations

import hashlib
import os

import gguf
import seqio
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from swirl_jax import atomic_io
from swirl_jax.checkpoints import gguf_bpe
from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary

_TYPE_NORMAL, _TYPE_UNKNOWN, _TYPE_CONTROL, _TYPE_USER, _TYPE_UNUSED, _TYPE_BYTE = 1, 2, 3, 4, 5, 6
CHAT_MARKERS = ("<start_of_turn>", "<end_of_turn>")
_SPECIAL = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}


def sentencepiece_proto_from_gguf(reader: gguf.GGUFReader, source: str) -> bytes:
  """The serialized SentencePiece model described by a GGUF file's metadata."""
  fields = reader.fields
  for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
    if key not in fields:
      raise ValueError(f"{source}: metadata field {key!r} is missing")
  model_kind = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
  if model_kind != "llama":
    raise ValueError(f"{source}: tokenizer.ggml.model={model_kind!r}; expected 'llama' (SentencePiece) or "
                     "'gpt2' (byte-level BPE)")
  pieces = fields["tokenizer.ggml.tokens"].contents()
  scores = fields["tokenizer.ggml.scores"].contents()
  types = fields["tokenizer.ggml.token_type"].contents()
  if not len(pieces) == len(scores) == len(types):
    raise ValueError(f"{source}: {len(pieces)} tokens, {len(scores)} scores, {len(types)} types")

  proto = spm_pb2.ModelProto()
  ids = {}
  for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
    if piece == _SPECIAL["unk"]:
      kind = _TYPE_UNKNOWN
    elif piece in CHAT_MARKERS:
      kind = _TYPE_USER
    if kind == _TYPE_USER:
      # User-defined pieces match normalized text, where spaces are already
      # U+2581; the file keeps their spaces literal ("  " for "▁▁").
      piece = piece.replace(" ", "\u2581")
    if piece in _SPECIAL.values():
      ids[piece] = i
    entry = proto.pieces.add()
    entry.piece, entry.score, entry.type = piece, float(score), int(kind)
  missing = [p for p in _SPECIAL.values() if p not in ids]
  if missing:
    raise ValueError(f"{source}: the vocabulary lacks the special pieces {missing}")

  spec = proto.trainer_spec
  spec.model_type = spm_pb2.TrainerSpec.BPE
  spec.vocab_size = len(pieces)
  spec.byte_fallback = True
  for role, piece in _SPECIAL.items():
    setattr(spec, f"{role}_id", ids[piece])
    setattr(spec, f"{role}_piece", piece)
  norm = proto.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = False
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return proto.SerializeToString()


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary with the BOS id and piece count the library asks for (the
  `Vocabulary` protocol of sampling/interfaces.py), so no caller reaches into `.tokenizer`."""

  @property
  def bos_id(self) -> int:
    return self.tokenizer.bos_id()

  @property
  def piece_count(self) -> int:
    """Pieces of the SentencePiece model (seqio's vocab_size may add extra ids)."""
    return self.tokenizer.get_piece_size()


def vocabulary_from_gguf(path: str, cache_dir: str | None = None, reader: gguf.GGUFReader | None = None
                         ) -> SentencePieceVocabulary | HFTokenizerVocabulary:
  """A seqio vocabulary for the tokenizer inside a GGUF file: Gemma's SentencePiece
  (`tokenizer.ggml.model` "llama"), or Qwen3's and Llama 3's byte-level BPE ("gpt2", gguf_bpe.py).

  The tokenizer's files are written once to `cache_dir` (default: beside the
  GGUF file), named by the hash of their content. `reader` reuses a parsed file.
  """
  reader = reader or gguf.GGUFReader(path)
  if "tokenizer.ggml.model" in reader.fields and reader.fields["tokenizer.ggml.model"].contents() == "gpt2":
    return gguf_bpe.bpe_vocabulary_from_gguf(path, cache_dir, reader)
  proto = sentencepiece_proto_from_gguf(reader, path)
  digest = hashlib.sha256(proto).hexdigest()[:16]
  cache_dir = cache_dir or os.path.dirname(os.path.abspath(path))
  model_path = os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.spm.model")
  if not os.path.exists(model_path):
    atomic_io.write_bytes(model_path, proto)
  return SentencePieceVocabulary(model_path)
