"""The HTTP client of the judge and the retriever, against servers on 127.0.0.1."""

import http.server
import json
import logging
import os
import time

import pytest

from swirl_jax import http_json
from swirl_jax.rewards.http_judge import HttpJudge
from swirl_jax.testing.local_server import serving


def _answer(text):
  return json.dumps({"choices": [{"message": {"content": text}}]}).encode()


class _Server(http.server.BaseHTTPRequestHandler):
  """Behaves as `mode` says; records the Authorization header of every request it gets."""

  mode, reply, redirect_to = "ok", "VERDICT: GOOD", ""
  seen: list = []

  def do_POST(self):
    self.rfile.read(int(self.headers.get("Content-Length", 0)))
    type(self).seen.append(self.headers.get("Authorization"))
    if self.mode == "redirect":
      self.send_response(302)
      self.send_header("Location", self.redirect_to)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    data = _answer(self.reply)
    if self.mode == "drip_headers":  # the status line and headers a byte at a time
      head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
      for i in range(len(head)):
        self.wfile.write(head[i:i + 1])
        self.wfile.flush()
        time.sleep(0.05)
      self.wfile.write(data)
      return
    if self.mode == "huge":
      data = json.dumps({"choices": [{"message": {"content": "x" * (2 << 20)}}]}).encode()
    self.send_response(200)
    if self.mode != "huge_unsized":
      self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.mode == "drip":  # each byte well within a socket timeout, the whole far beyond it
      for i in range(len(data)):
        self.wfile.write(data[i:i + 1])
        self.wfile.flush()
        time.sleep(0.05)
    elif self.mode == "huge_unsized":
      for _ in range(64):
        self.wfile.write(b" " * (64 << 10))
    else:
      self.wfile.write(data)

  do_GET = do_POST  # a client that follows a 302 comes back with GET

  def log_message(self, *args):
    pass


def _handler(**attributes):
  return type("Handler", (_Server,), {"seen": [], **attributes})


def _judge(port, cache, **kwargs):
  return HttpJudge(f"http://127.0.0.1:{port}/v1", "judge-model", str(cache), timeout_s=kwargs.pop("timeout_s", 5),
                   retries=kwargs.pop("retries", 0), backoff_s=0.01, **kwargs)


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(tmp_path, monkeypatch):
  monkeypatch.setenv("SWIRL_JUDGE_API_KEY", "sk-secret")
  elsewhere = _handler(reply="VERDICT: BAD")
  with serving(elsewhere) as other_port:
    redirecting = _handler(mode="redirect", redirect_to=f"http://127.0.0.1:{other_port}/v1/chat/completions")
    with serving(redirecting) as port:
      text, error = _judge(port, tmp_path / "cache").complete("a prompt")
  assert text is None and "HTTP 302 redirect" in error and "not followed" in error and "sk-secret" not in error
  assert redirecting.seen == ["Bearer sk-secret"] and elsewhere.seen == []
  assert not [f for _, _, files in os.walk(tmp_path / "cache") for f in files]  # nothing cached


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_the_timeout_bounds_the_whole_request_not_each_read(tmp_path, mode):
  with serving(_handler(mode=mode)) as port:
    text, error = _judge(port, tmp_path / "cache", timeout_s=0.5).complete("a prompt")
  assert text is None and "timed out after 0.5 s" in error


@pytest.mark.parametrize("mode", ["huge", "huge_unsized"])
def test_the_response_size_is_bounded(tmp_path, mode):
  with serving(_handler(mode=mode)) as port:
    text, error = _judge(port, tmp_path / "cache", max_response_bytes=1 << 20).complete("a prompt")
  assert text is None and "1048576-byte bound" in error


def test_the_cache_is_keyed_by_endpoint_and_model(tmp_path):
  cache = tmp_path / "cache"
  with serving(_handler(reply="VERDICT: GOOD")) as good_port, serving(_handler(reply="VERDICT: BAD")) as bad_port:
    assert _judge(good_port, cache).complete("same prompt") == ("VERDICT: GOOD", "")
    assert _judge(bad_port, cache).complete("same prompt") == ("VERDICT: BAD", "")  # not the other server's answer
    other_model = HttpJudge(f"http://127.0.0.1:{good_port}/v1", "another-model", str(cache), retries=0)
    assert other_model.cache_path("same prompt") != _judge(good_port, cache).cache_path("same prompt")


def test_a_corrupt_cache_entry_is_set_aside_and_asked_again(tmp_path):
  handler = _handler(reply="VERDICT: GOOD")
  with serving(handler) as port:
    judge = _judge(port, tmp_path / "cache")
    path = judge.cache_path("a prompt")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
      f.write('{"text": ')  # a run killed mid-write by an older version, or a full disk
    assert judge.complete("a prompt") == ("VERDICT: GOOD", "") and len(handler.seen) == 1
    assert open(path + ".corrupt").read() == '{"text": ' and json.load(open(path)) == {"text": "VERDICT: GOOD"}
    assert judge.complete("a prompt") == ("VERDICT: GOOD", "") and len(handler.seen) == 1  # cached now


def test_a_key_over_plain_http_to_another_host_is_warned_about(caplog):
  caplog.set_level(logging.WARNING)
  assert not http_json.warn_plain_http_key("http://127.0.0.1:8000/v1")
  assert not http_json.warn_plain_http_key("https://judge.example.com/v1")
  # 192.0.2.1 is TEST-NET-1: never routed; the warning comes before any connection.
  value, error = http_json.post_json("http://192.0.2.1:9/v1", {}, headers={"Authorization": "Bearer k"},
                                     timeout_s=0.2, retries=0, backoff_s=0)
  assert value is None and error
  assert "API key is sent over plain http to 192.0.2.1" in caplog.text and "Bearer" not in caplog.text
  assert not http_json.warn_plain_http_key("http://192.0.2.1:9/other")  # once per host
