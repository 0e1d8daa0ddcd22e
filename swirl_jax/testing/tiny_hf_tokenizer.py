"""Tiny byte-level BPE tokenizers laid out as Qwen3's and Llama 3's (tokenizer.json and its configs),
trained here with the `tokenizers` library, for tests: no download."""

from __future__ import annotations

import json
import os

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

# The special tokens each family's files name, in their order (ids follow the learned pieces).
SPECIAL = {
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
TEMPLATE = {  # enough of each family's chat template for the format to be recognised
    "qwen3": "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
             "{% endfor %}<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message.role }}"
              "<|end_header_id|>\n\n{{ message.content }}<|eot_id|>{% endfor %}",
}
# Each family's own pre-tokenizer split, as its tokenizer.json writes it (Qwen: one digit a piece; Llama
# 3: up to three), and its normalizer (Qwen: NFC).
SPLIT = {
    "qwen3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_CORPUS = [
    "Solve the problem by working in steps. Think briefly, then compute <math_exp>12 * 7</math_exp> "
    "or answer <answer>84</answer>. Question: What is 3 + 4? 7 -> 7. user assistant",
    "0 1 2 3 4 5 6 7 8 9 + - * / ( ) = . , ? ! the a an is of to and in that step answer question",
]


def write_tiny_hf_tokenizer(directory: str, family: str, vocab_size: int = 400) -> str:
  """Writes tokenizer.json, tokenizer_config.json and generation_config.json of a `family`
  ("qwen3" or "llama3") tokenizer of at most `vocab_size` pieces into `directory`."""
  special = SPECIAL[family]
  tokenizer = tokenizers.Tokenizer(models.BPE(ignore_merges=family == "llama3"))
  if family == "qwen3":
    tokenizer.normalizer = normalizers.NFC()
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(SPLIT[family]), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(special), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(_CORPUS * 4, trainer)
  tokenizer.add_special_tokens(special)
  if family == "llama3":  # Llama 3's tokenizer.json puts its BOS first (transformers' encode)
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))])
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  if family == "qwen3":  # Qwen: no BOS; generation stops at <|im_end|> and <|endoftext|>
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    stops = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
  else:
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    stops = [tokenizer.token_to_id(t) for t in ("<|end_of_text|>", "<|eot_id|>")]
  config.update(chat_template=TEMPLATE[family], tokenizer_class="PreTrainedTokenizerFast")
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=1)
  with open(os.path.join(directory, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": stops}, f, indent=1)
  return directory
