"""The README's "use it from your own JAX code" example runs as written."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_example_runs(tmp_path):
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  section = readme.split("## Use it from your own JAX code", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
  script = tmp_path / "readme_example.py"
  script.write_text(code)
  env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  loss = float(re.search(r"^loss (\S+)$", out.stdout, re.MULTILINE).group(1))
  assert 0.0 <= loss < 50.0  # a finite, non-negative reward-weighted NLL
