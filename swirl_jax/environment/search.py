"""The `<search_query>` tool: BM25 over a local corpus, or a user's HTTP retriever.

The paper retrieves the top-1 article of a per-dataset corpus; we build that
corpus from the dataset's own paragraphs and rank with BM25 (`bm25s`).
"""

from __future__ import annotations

from typing import Sequence

import gin

from swirl_jax.data.jsonl import read_jsonl
from swirl_jax.environment.tool import ToolResult
from swirl_jax.http_json import post_json
from swirl_jax.records import Passage
from swirl_jax.sampling.interfaces import Vocabulary


def load_passages_jsonl(path: str) -> list[Passage]:
  """A corpus from JSONL lines `{"title": ..., "text": ...}`; errors name file and line."""
  passages = []
  for where, record in read_jsonl(path):
    for field in ("title", "text"):
      if not isinstance(record.get(field), str):
        raise ValueError(f"{where}: field {field!r} is missing or not a string")
    passages.append(Passage(record["title"], record["text"]))
  if not passages:
    raise ValueError(f"{path}: the corpus is empty")
  return passages


def _truncate(text: str, max_tokens: int, vocab) -> str:
  if vocab is not None:
    ids = vocab.encode(text)
    return text if len(ids) <= max_tokens else vocab.decode(ids[:max_tokens]) + " ..."
  words = text.split(" ")
  return text if len(words) <= max_tokens else " ".join(words[:max_tokens]) + " ..."


def format_passages(passages: Sequence[Passage], max_tokens: int, vocab: Vocabulary=None) -> str:
  if not passages:
    return "No results."
  text = "\n\n".join(f"{p.title}: {p.text}" for p in passages)
  return _truncate(text, max_tokens, vocab)


@gin.configurable
class BM25Search:
  """Top-k BM25 over passages (title and text indexed together)."""

  name = "search"
  tag = "search_query"

  def __init__(self, passages: Sequence[Passage], top_k: int = 1, max_result_tokens: int = 256,
               vocab=None):
    if not passages:
      raise ValueError("BM25Search: the corpus is empty")
    self.passages = list(passages)
    self.top_k = top_k
    self.max_result_tokens = max_result_tokens
    self.vocab = vocab
    # Imported here: bm25s runs a JAX computation when imported (its top-k backend), which would
    # start the XLA backend before jax.distributed.initialize() in a multi-host run.
    import bm25s
    self._bm25s = bm25s
    self._index = bm25s.BM25()
    corpus_tokens = bm25s.tokenize([f"{p.title} {p.text}" for p in self.passages],
                                   stopwords="en", show_progress=False)
    self._index.index(corpus_tokens, show_progress=False)

  def search(self, query: str, k: int | None = None) -> list[tuple[Passage, float]]:
    """The best k passages with their scores; passages that share no term are left out."""
    k = min(k or self.top_k, len(self.passages))
    tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
    if not tokens.vocab:
      return []
    ids, scores = self._index.retrieve(tokens, k=k, show_progress=False)
    return [(self.passages[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

  def run(self, query: str) -> ToolResult:
    if not query.strip():
      return ToolResult("Error: empty search query", error=True)
    hits = [p for p, _ in self.search(query)]
    return ToolResult(format_passages(hits, self.max_result_tokens, self.vocab))


@gin.configurable
class HttpSearch:
  """A user's search service: POST {"query", "top_k"} -> {"results": [{"title", "text"}]}."""

  name = "search"
  tag = "search_query"

  def __init__(self, url: str | None = None, top_k: int = 1, max_result_tokens: int = 256,
               timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5, vocab=None):
    if not url:
      raise ValueError("HttpSearch.url is not set: bind it to your search service (HttpSearch.url = 'http://...')")
    self.url = url
    self.top_k = top_k
    self.max_result_tokens = max_result_tokens
    self.timeout_s = timeout_s
    self.retries = retries
    self.backoff_s = backoff_s
    self.vocab = vocab

  def _passages(self, payload) -> list[Passage]:
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list):
      raise ValueError("response has no 'results' list")
    passages = []
    for i, r in enumerate(results[:self.top_k]):
      if not (isinstance(r, dict) and isinstance(r.get("title"), str) and isinstance(r.get("text"), str)):
        raise ValueError(f"results[{i}] lacks string fields 'title' and 'text'")
      passages.append(Passage(r["title"], r["text"]))
    return passages

  def run(self, query: str) -> ToolResult:
    if not query.strip():
      return ToolResult("Error: empty search query", error=True)
    passages, error = post_json(self.url, {"query": query, "top_k": self.top_k}, timeout_s=self.timeout_s,
                                retries=self.retries, backoff_s=self.backoff_s, parse=self._passages)
    if passages is None:
      return ToolResult(f"Error: search service unavailable ({error})", error=True)
    return ToolResult(format_passages(passages, self.max_result_tokens, self.vocab))
