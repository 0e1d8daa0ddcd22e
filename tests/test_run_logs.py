"""Library logs go to a file in the run directory; the terminal keeps warnings and errors."""

import glob
import subprocess
import sys
import textwrap

from swirl_jax.testing.subprocesses import cpu_env

SCRIPT = textwrap.dedent("""
    import logging as std_logging, sys
    from absl import app, logging
    from swirl_jax import runtime

    def main(argv):
      runtime.log_to_directory(sys.argv[1])
      logging.info("absl info line")
      std_logging.getLogger("orbax.checkpoint").info("a library's info line")
      logging.warning("absl warning line")

    app.run(main, argv=sys.argv[:1])
""")


def test_info_goes_to_the_log_file_and_warnings_to_the_terminal(tmp_path):
  done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "log")], env=cpu_env(tmp_path),
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "absl warning line" in done.stderr
  assert "info line" not in done.stderr
  [log] = glob.glob(str(tmp_path / "log" / "swirl_jax.*.log.INFO.*"))
  text = open(log).read()
  assert "absl info line" in text and "a library's info line" in text and "absl warning line" in text
