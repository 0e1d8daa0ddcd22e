"""How each model family's chat template marks turns (Gemma, ChatML for Qwen, Llama 3's headers).

A tokenizer knows its family's format (`HFTokenizerVocabulary.chat_format`); the environment's
protocol writes prompts and tool results in it (`chat_format(vocab)` here, re-exported by
`environment.protocol`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """How a model family's chat template marks turns: a turn is `start_user` (or `start_model`), its
  text, `end_turn`; `between` follows a turn's end before the next turn starts."""

  name: str
  start_user: str
  start_model: str
  end_turn: str
  between: str = "\n"

  def closed(self, text: str = "") -> str:
    """`text`, then the end of its turn and what comes before the next."""
    return f"{text}{self.end_turn}{self.between}"


GEMMA = ChatFormat("gemma", "<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>")
CHATML = ChatFormat("chatml", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>")  # Qwen
LLAMA3 = ChatFormat("llama3", "<|start_header_id|>user<|end_header_id|>\n\n",
                    "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", between="")
CHAT_FORMATS = {f.name: f for f in (GEMMA, CHATML, LLAMA3)}


def chat_format(vocab) -> ChatFormat:
  """The chat format of a vocabulary's model family (its `chat_format`; Gemma's by default)."""
  return getattr(vocab, "chat_format", None) or GEMMA


def turn_end_ids(vocab) -> tuple[int, ...]:
  """Token ids that end a model turn: EOS, the chat format's turn end where the vocabulary has it as
  one piece (Gemma's <end_of_turn>, ChatML's <|im_end|>, Llama 3's <|eot_id|>), and any the
  tokenizer's own config names (`stop_ids`: generation_config.json's eos_token_id). A turn end that
  the vocabulary splits into several pieces adds none of them (each alone is ordinary text). The
  sampler stops at these; an export lists them as the eos ids."""
  end_of_turn = list(vocab.encode(chat_format(vocab).end_turn))
  one_piece = end_of_turn if len(end_of_turn) == 1 else []
  ids = [vocab.eos_id] + one_piece + list(getattr(vocab, "stop_ids", ()))
  return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
