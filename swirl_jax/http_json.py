"""POST JSON with a whole-request deadline, a size bound and retries (httpx): what the HTTP
retriever and the HTTP judge share.

Redirects are not followed (httpx's default, kept on purpose): a key sent with a
request never reaches another location, and a redirected answer is an error,
never a result. A key sent over plain http to a host other than this machine
is warned about once per host.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from absl import logging

from swirl_jax.loopback import is_loopback

MAX_RESPONSE_BYTES = 8 << 20
_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


class _Refused(Exception):
  """An answer that retrying will not change (a redirect, a 4xx, an oversized body)."""


def warn_plain_http_key(url: str) -> bool:
  """Warns (once per host) that a key would travel unencrypted; returns whether it did now."""
  parts = urlsplit(url)
  host = parts.hostname or ""
  if parts.scheme != "http" or is_loopback(host):
    return False
  with _warned_lock:
    if host in _warned_hosts:
      return False
    _warned_hosts.add(host)
  logging.warning("an API key is sent over plain http to %s: anyone on the path can read it; use https", host)
  return True


def _read_bounded(response: httpx.Response, deadline: float, max_bytes: int) -> bytes:
  declared = response.headers.get("content-length")
  if declared and declared.isdigit() and int(declared) > max_bytes:
    raise _Refused(f"response of {declared} bytes is over the {max_bytes}-byte bound")
  chunks, size = [], 0
  for chunk in response.iter_bytes():
    size += len(chunk)
    if size > max_bytes:
      raise _Refused(f"response over the {max_bytes}-byte bound")
    if time.monotonic() > deadline:
      raise httpx.ReadTimeout("the whole response did not arrive within the timeout")
    chunks.append(chunk)
  return b"".join(chunks)


def _one_try(client: httpx.Client, url: str, body: dict, headers, timeout_s: float, deadline: float,
             parse, max_response_bytes: int) -> tuple[str, Any]:
  """("ok", value), ("retry", error) or ("final", error) for one request."""
  try:
    with client.stream("POST", url, json=body, headers=headers, timeout=timeout_s,
                       follow_redirects=False) as response:
      if response.is_redirect:
        raise _Refused(f"HTTP {response.status_code} redirect to {response.headers.get('location', '?')!r} "
                       "not followed (point the URL at the final address)")
      if response.status_code >= 400:
        final = response.status_code < 500 and response.status_code != 429
        return ("final" if final else "retry"), f"HTTP {response.status_code}"
      return "ok", parse(json.loads(_read_bounded(response, deadline, max_response_bytes)))
  except _Refused as e:
    return "final", str(e)
  except httpx.TimeoutException as e:
    return "retry", f"timed out after {timeout_s} s ({type(e).__name__})"
  except httpx.HTTPError as e:
    return "retry", f"{type(e).__name__}: {e}"
  except ValueError as e:  # not JSON, or `parse` refused it
    return "retry", f"{type(e).__name__}: {e}"


def _within(seconds: float, attempt: Callable[[], tuple[str, Any]]) -> tuple[str, Any]:
  """`attempt()`'s result if it comes within `seconds`; else a timeout (the attempt, left to run
  out in its thread, stops at its own deadline or socket timeout)."""
  box: list = []

  def run():
    try:
      box.append(attempt())
    except Exception as e:  # noqa: BLE001 - reported as a failed try, never lost in the thread
      box.append(("retry", f"{type(e).__name__}: {e}"))

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  return box[0] if box else ("retry", f"timed out after {seconds} s (the whole request)")


def post_json(url: str, body: dict, *, headers: dict[str, str] | None = None, timeout_s: float,
              retries: int, backoff_s: float, parse: Callable[[Any], Any] = lambda payload: payload,
              max_response_bytes: int = MAX_RESPONSE_BYTES, client: httpx.Client | None = None):
  """(parse(response JSON), "") or (None, error) after 1 + `retries` tries with exponential backoff.

  Each try, from connecting to the last byte of the answer, gets `timeout_s` in
  all. A redirect, a 4xx answer other than 429, or a body over
  `max_response_bytes` is final; `parse` raising ValueError counts as a failed
  try. Headers (an API key) never appear in the error text.
  """
  if headers and any(k.lower() == "authorization" for k in headers):
    warn_plain_http_key(url)
  own_client = client is None
  client = client or httpx.Client(follow_redirects=False)
  error, attempt = "", 0
  try:
    for attempt in range(retries + 1):
      deadline = time.monotonic() + timeout_s
      outcome, value = _within(timeout_s, lambda: _one_try(client, url, body, headers, timeout_s, deadline, parse,
                                                           max_response_bytes))
      if outcome == "ok":
        return value, ""
      error = value
      if outcome == "final":
        break
      if attempt < retries:
        time.sleep(backoff_s * 2**attempt)
  finally:
    if own_client:
      client.close()
  return None, f"failed after {attempt + 1} tries ({error[:160]})"
