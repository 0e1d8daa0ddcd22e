"""Test setup: 8 fake CPU devices (set before jax is imported), the tiers, and shared fixtures.

Tiers (docs/testing.md): `make test` runs every test not marked `slow`, `multiprocess` or
`extras`; `make test-all` runs them all, with the extras installed.
"""

import importlib
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


MARKERS = {
    "slow": "long: learning, kill-and-resume, command-line runs end to end, Gemma 3 270M against "
            "transformers (make test-all only)",
    "multiprocess": "2 CPU processes on 127.0.0.1 with gloo collectives (make test-all only)",
    "extras": "needs an optional extra (libtpu, xmanager) that make test-all installs (make test-all only)",
}


def pytest_configure(config):
  for name, meaning in MARKERS.items():
    config.addinivalue_line("markers", f"{name}: {meaning}")


@pytest.fixture
def extra():
  """`extra(module, what)` imports an optional extra's module. Where it is missing the test is
  skipped, except under `make test-all` (SWIRL_JAX_TEST_EXTRAS=required), which installs the
  extras: there a missing one fails rather than passing unnoticed as a skip."""

  def need(module: str, what: str):
    if os.environ.get("SWIRL_JAX_TEST_EXTRAS") == "required":
      return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{what} is not installed")
  return need


@pytest.fixture(scope="session")
def gemma3_270m_vocabulary():
  """The embedded Gemma 3 270M's tokenizer alone (the file assembled, the weights not dequantized)."""
  from swirl_jax.checkpoints import embedded
  from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
  return vocabulary_from_gguf(embedded.gemma3_270m_gguf_path(), cache_dir=embedded.cache_dir())


@pytest.fixture(scope="session")
def gemma3_270m():
  """The embedded Gemma 3 270M (model, vocabulary), loaded once per test session."""
  from swirl_jax.checkpoints import embedded
  return embedded.load_gemma3_270m()


@pytest.fixture(scope="module")
def tokenizer_gguf(tmp_path_factory):
  """A tiny GGUF file (random tiny weights, a byte-fallback vocabulary) for subprocess tests."""
  from swirl_jax.models import model_config
  from tests import hf_reference
  from swirl_jax.testing.tiny_gguf import write_tiny_gguf
  path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
  cfg = model_config("tiny")
  write_tiny_gguf(path, hf_reference.random_hf_model(cfg), cfg)
  return str(path)


# The longest files are collected first: with `--dist loadfile --no-loadscope-reorder` (the Makefile)
# the 2 workers are handed files in collection order, so a long file is not started last, leaving
# one worker idle at the end. (Without --no-loadscope-reorder xdist hands out the files with the
# most tests first, and this order is lost.)
_LONGEST_FIRST = ("test_miniature.py", "test_multihost_stages.py", "test_trainer.py", "test_export.py",
                  "test_gemma3_270m.py", "test_generation.py", "test_losses.py", "test_readme.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
