"""A judge run by any model the library loads, in the same mesh as the policy.

Two modes. `generate`: the judge writes its reasoning and a verdict line, read
by `parse_label` (unreadable output gives no verdict). `score`: one forward
pass over the prompt ending in "VERDICT:", and the score is
P(GOOD) / (P(GOOD) + P(BAD)) of the next token (YES / NO for outcomes).
"""

from __future__ import annotations

from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swirl_jax.environment import protocol
from swirl_jax.records import Verdict
from swirl_jax.rewards.judge import PromptJudge, verdict_from_text
from swirl_jax.sampling.sampler import Sampler, SamplingConfig


@nnx.jit
def _last_logits(model, tokens_BxT, lengths_B):
  segments_BxT = (jnp.arange(tokens_BxT.shape[1])[None, :] < lengths_B[:, None]).astype(jnp.int32)
  hidden = model.hidden_states(tokens_BxT, None, segments_BxT)
  return model.logits_at(hidden[jnp.arange(tokens_BxT.shape[0]), lengths_B - 1])


@gin.configurable
class ModelJudge(PromptJudge):
  name = "model"
  runs_on_devices = True  # its forward passes are collective: only the main thread, in step, may judge

  def __init__(self, model, vocab, mode: str = "score", batch_size: int = 8, max_new_tokens: int = 256,
               capacity: int = 4096, mesh=None):
    if mode not in ("score", "generate"):
      raise ValueError(f"ModelJudge.mode={mode!r}; use 'score' or 'generate'")
    self.model, self.vocab, self.mode = model, vocab, mode
    self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
    self.capacity, self.mesh = capacity, mesh
    self._sampler = None

  def _chat(self, prompt: str, prefill: str = "") -> list[int]:
    fmt = protocol.chat_format(self.vocab)
    text = fmt.start_user + fmt.closed(prompt) + fmt.start_model + prefill
    return ([self.vocab.bos_id] if self.vocab.bos_id is not None else []) + list(self.vocab.encode(text))

  def _label_ids(self, labels: tuple[str, str]) -> tuple[int, int]:
    ids = tuple(self.vocab.encode(" " + label)[0] for label in labels)
    if ids[0] == ids[1]:
      ids = tuple(self.vocab.encode(label)[0] for label in labels)
    if ids[0] == ids[1]:
      raise ValueError(f"ModelJudge: {labels} share their first token; score mode cannot tell them apart")
    return ids

  def _score(self, prompts_: Sequence[str], labels: tuple[str, str]) -> list[Verdict]:
    first, second = self._label_ids(labels)
    verdicts = []
    for start in range(0, len(prompts_), self.batch_size):
      batch = [self._chat(p, "VERDICT:") for p in prompts_[start:start + self.batch_size]]
      width = 1 << max(4, (max(map(len, batch)) - 1).bit_length())  # a few shapes, not one per batch
      tokens = np.zeros((self.batch_size, width), np.int32)
      lengths = np.ones(self.batch_size, np.int32)
      for row, ids in enumerate(batch):
        tokens[row, :len(ids)], lengths[row] = ids, len(ids)
      logits = np.asarray(_last_logits(self.model, jnp.asarray(tokens), jnp.asarray(lengths)))
      for row in range(len(batch)):
        pair = jax.nn.softmax(jnp.asarray([logits[row, first], logits[row, second]]))
        score = float(pair[0])
        verdicts.append(Verdict(labels[0] if score >= 0.5 else labels[1], score,
                                f"P({labels[0]}) / (P({labels[0]}) + P({labels[1]})) = {score:.4f}", self.name))
    return verdicts

  def _generate(self, prompts_: Sequence[str], labels: tuple[str, str]) -> list[Verdict]:
    if self._sampler is None:
      self._sampler = Sampler(self.model, rows=self.batch_size, capacity=self.capacity, vocab=self.vocab,
                              mesh=self.mesh)
    config = SamplingConfig(max_new_tokens=self.max_new_tokens,
                            stop_ids=protocol.turn_end_ids(self.vocab))
    verdicts = []
    for start in range(0, len(prompts_), self.batch_size):
      batch = prompts_[start:start + self.batch_size]
      self._sampler.reset()
      self._sampler.append({row: self._chat(p) for row, p in enumerate(batch)})
      outputs = self._sampler.generate(range(len(batch)), config)
      verdicts += [verdict_from_text(outputs[row].text, labels, self.name) for row in range(len(batch))]
    return verdicts

  def answer_prompts(self, prompts_: Sequence[str], labels: tuple[str, str], what: str) -> list[Verdict]:
    return self._score(prompts_, labels) if self.mode == "score" else self._generate(prompts_, labels)
