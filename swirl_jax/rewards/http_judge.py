"""A judge served by an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted APIs).

Requests run with bounded concurrency, a whole-request timeout, a response
size bound and retries with exponential backoff (`http_json.post_json`);
redirects are refused, never followed. Every answer is cached on disk under
the hash of its endpoint and request (model included), so a re-run pays only
for what is missing; an unreadable cache entry is set aside (`.corrupt`) and
asked again. The API key is read from an environment variable at request time
and is never logged, cached or written anywhere.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
from typing import Sequence

import gin
import httpx
from absl import logging
from tqdm import tqdm

from swirl_jax import atomic_io
from swirl_jax.http_json import post_json
from swirl_jax.records import Verdict
from swirl_jax.rewards.judge import PromptJudge, verdict_from_text


@gin.configurable
class HttpJudge(PromptJudge):
  name = "http"

  def __init__(self, base_url: str, model: str, cache_dir: str, api_key_env: str = "SWIRL_JUDGE_API_KEY",
               concurrency: int = 8, timeout_s: float = 60.0, retries: int = 4, backoff_s: float = 1.0,
               max_tokens: int = 512, temperature: float = 0.0, max_response_bytes: int = 1 << 20):
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.cache_dir = cache_dir
    self.api_key_env = api_key_env
    self.concurrency = concurrency
    self.timeout_s = timeout_s
    self.retries = retries
    self.backoff_s = backoff_s
    self.max_tokens = max_tokens
    self.temperature = temperature
    self.max_response_bytes = max_response_bytes
    # Thread-safe, keeps connections alive. No cap of its own on connections (httpx's default of 100
    # queued requests behind each other): `concurrency` per call, times the calls made at once (an
    # online trainer's `OnlineConfig.judge_threads`), is what reaches the server.
    self.client = httpx.Client(follow_redirects=False,
                               limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
    os.makedirs(cache_dir, exist_ok=True)

  def _body(self, prompt: str) -> dict:
    return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature, "max_tokens": self.max_tokens}

  def cache_path(self, prompt: str) -> str:
    """Where the answer to `prompt` is cached: keyed by the endpoint and the whole request, so another
    server or model never answers from here."""
    body = self._body(prompt)
    key = hashlib.sha256(json.dumps({"url": self.url, "body": body}, sort_keys=True).encode()).hexdigest()
    return os.path.join(self.cache_dir, key[:2], key + ".json")

  @staticmethod
  def _cached(path: str) -> str | None:
    """The cached answer, or None when there is none or it is unreadable (then moved aside, kept)."""
    if not os.path.exists(path):
      return None
    try:
      with open(path, encoding="utf-8") as f:
        text = json.load(f)["text"]
      if isinstance(text, str):
        return text
    except (OSError, ValueError, KeyError, TypeError):
      pass
    try:
      os.replace(path, path + ".corrupt")
    except FileNotFoundError:  # another thread or process moved it first
      return None
    logging.warning("%s: unreadable judge cache entry moved to %s.corrupt; asking the server again", path, path)
    return None

  @staticmethod
  def _content(payload) -> str:
    try:
      return str(payload["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
      raise ValueError("the response has no choices[0].message.content") from None

  def complete(self, prompt: str) -> tuple[str | None, str]:
    """(text, error): from the cache, else the server (retrying); text None when it failed."""
    body, path = self._body(prompt), self.cache_path(prompt)
    cached = self._cached(path)
    if cached is not None:
      return cached, ""
    key = os.environ.get(self.api_key_env)  # read per request; never stored or logged
    text, error = post_json(self.url, body, headers={"Authorization": "Bearer " + key} if key else None,
                            timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s,
                            parse=self._content, max_response_bytes=self.max_response_bytes, client=self.client)
    if text is None:
      return None, f"judge request {error}"
    with atomic_io.atomic_open(path) as f:
      json.dump({"text": text}, f)
    return text, ""

  def answer_prompts(self, prompts_: Sequence[str], labels: tuple[str, str], what: str) -> list[Verdict]:
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      # A bar from the main thread only (an online trainer judges a state per thread).
      quiet = None if threading.current_thread() is threading.main_thread() else True
      results = list(tqdm(pool.map(self.complete, prompts_), total=len(prompts_), desc=what,
                          leave=False, disable=quiet))
    verdicts = []
    for text, error in results:
      if text is None:
        verdicts.append(Verdict(None, None, "", self.name, error))
        continue
      verdicts.append(verdict_from_text(text, labels, self.name))
    return verdicts
