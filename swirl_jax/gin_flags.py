"""The gin flags of every swirl_jax command line: `--gin_file=F --gin.NAME=VALUE`, as in T5X.

`swirl_jax.main` and the experiment scripts (experiments/miniature/run.py) take the same syntax:
`--gin.NAME=VALUE` is shorthand for `--gin_bindings=NAME=VALUE`.
"""

from __future__ import annotations

import sys
from typing import Callable

import gin
from absl import app, flags

GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "gin files, applied in order.")
GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Individual gin bindings (or --gin.NAME=VALUE).")
GIN_SEARCH_PATHS = flags.DEFINE_multi_string("gin_search_paths", ["."], "Where gin files are looked up.")


def rewrite_gin_args(argv: list[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` into `--gin_bindings=NAME=VALUE`."""
  out = []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise app.UsageError(f"{arg}: expected --gin.NAME=VALUE")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def parse_gin() -> None:
  """Parses the gin files and bindings given on the command line."""
  for path in GIN_SEARCH_PATHS.value:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(GIN_FILES.value, GIN_BINDINGS.value)


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run, with `--gin.NAME=VALUE` understood."""
  app.run(main, argv=rewrite_gin_args(sys.argv))
