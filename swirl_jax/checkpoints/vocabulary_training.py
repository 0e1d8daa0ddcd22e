"""A small SentencePiece vocabulary trained on a task's own text, for models trained from scratch.

Gemma's 262k-piece vocabulary would make a few-million-parameter policy mostly
embedding table. The pieces follow Gemma's conventions: `<pad>`, `<eos>`,
`<bos>`, `<unk>` at ids 0-3, BPE with byte fallback (any text encodes), no
dummy prefix and no whitespace folding (turn deltas encode exactly as they
read), digits split (numbers are copied digit by digit), and the chat markers
and protocol tags as single pieces.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

from swirl_jax import atomic_io
from swirl_jax.checkpoints.tokenizer import CHAT_MARKERS, SentencePieceVocabulary

PROTOCOL_SYMBOLS = (*CHAT_MARKERS, "<math_exp>", "</math_exp>", "<search_query>", "</search_query>",
                    "<answer>", "</answer>", "\n")


def train_vocabulary(texts: Iterable[str], model_path: str, vocab_size: int = 1024,
                     symbols: Sequence[str] = PROTOCOL_SYMBOLS) -> SentencePieceVocabulary:
  """Trains (or, when `model_path` exists, reuses) a vocabulary of exactly `vocab_size` pieces
  (SentencePiece says so when the texts cannot fill it)."""
  if not os.path.exists(model_path):
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
        user_defined_symbols=list(symbols), pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, max_sentence_length=1 << 16,
        num_threads=os.cpu_count() or 1, minloglevel=2)
    atomic_io.write_bytes(model_path, model.getvalue())
  return SentencePieceVocabulary(model_path)
