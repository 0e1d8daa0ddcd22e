"""How each model family's chat template marks turns (Gemma, ChatML for Qwen, Llama 3's headers).

A tokenizer knows its family's format (`HFTokenizerVocabulary.chat_format`); the environment's
protocol writes prompts and tool results in it (`environment.protocol.chat_format(vocab)`).
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
