"""The environment of a swirl_jax subprocess in a test: CPU only, quiet TF, its own cache."""

from __future__ import annotations

import os
import socket

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_env(tmp_path) -> dict[str, str]:
  """os.environ for a child process: JAX on CPU, the embedded model's cache under `tmp_path`, and
  this checkout importable."""
  return {**os.environ, "SWIRL_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
          "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (for a coordinator or a test server)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
