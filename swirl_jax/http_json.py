"""POST JSON with a timeout and retries: what the HTTP retriever and the HTTP judge share."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable


def post_json(url: str, body: dict, *, headers: dict[str, str] | None = None, timeout_s: float,
              retries: int, backoff_s: float, parse: Callable[[Any], Any] = lambda payload: payload):
  """(parse(response JSON), "") or (None, error) after 1 + `retries` tries with exponential backoff.

  A 4xx answer other than 429 is final; `parse` raising ValueError counts as a failed try.
  Headers (an API key) never appear in the error text.
  """
  data = json.dumps(body).encode()
  error = ""
  for attempt in range(retries + 1):
    try:
      request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                                **(headers or {})})
      with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return parse(json.loads(response.read())), ""
    except urllib.error.HTTPError as e:
      error = f"HTTP {e.code}"
      if 400 <= e.code < 500 and e.code != 429:
        break
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
      error = type(e).__name__ + (f": {e.reason}" if isinstance(e, urllib.error.URLError) else f": {e}")
    if attempt < retries:
      time.sleep(backoff_s * 2**attempt)
  return None, f"failed after {attempt + 1} tries ({error[:120]})"
