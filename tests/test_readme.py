"""The README's "use it from your own JAX code" example runs as written."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_readme_example_runs(tmp_path):
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  section = readme.split("## Use it from your own JAX code", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
  script = tmp_path / "readme_example.py"
  script.write_text(code + _REFERENCE)
  env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  printed = re.search(r"^loss (\S+) sft_loss (\S+)$", out.stdout, re.MULTILINE)
  loss, sft_loss = float(printed.group(1)), float(printed.group(2))
  reference = re.search(r"^reference (\S+) (\S+)$", out.stdout, re.MULTILINE)
  reference_loss, reference_sft = float(reference.group(1)), float(reference.group(2))
  # Greedy steps of a 270M model are mostly BAD (reward 0), so the step-wise loss may be 0; the SFT
  # loss on the same rows cannot be, and both must equal the plain per-trajectory computation.
  assert sft_loss > 0.1 and abs(sft_loss - reference_sft) <= 1e-3 * reference_sft, (sft_loss, reference_sft)
  assert abs(loss - reference_loss) <= 1e-3 * max(reference_loss, 1e-3), (loss, reference_loss)


# Appended to the README's code: the same losses from one plain forward pass per trajectory (no
# prefix sharing, no gathering at loss positions), over every action token.
_REFERENCE = """
import jax
from swirl_jax.data.decomposition import step_reward
terms = []
for t in trajectories:
  ids = [i for s in t.steps for i in s.context_tokens + s.action_tokens]
  logp = jax.nn.log_softmax(model(jnp.asarray([ids]))[0].astype(jnp.float32), axis=-1)
  position = 0
  for s in t.steps:
    position += len(s.context_tokens)
    for token in s.action_tokens:
      terms.append((step_reward(s), float(logp[position - 1, token])))
      position += 1
n = max(len(terms), 1)
print("reference", -sum(r * lp for r, lp in terms) / n, -sum(lp for _, lp in terms) / n)
"""
