"""The streamed exports (HF and GGUF) on 2 CPU processes that share one core: they finish, and the GGUF
file is byte for byte the one 1 process writes.

Each tensor is gathered by its own program with cross-process collectives (gloo). Process 0 waits
for each to land on its host before it writes; when process 1 did not wait, it ran tensors ahead and
its queued programs held XLA's CPU threads while waiting in collectives that process 0 had not yet
reached: both processes waited for ever (the 2-process sampling-layout test hung that way in CI).
One core makes that the usual case rather than a rare one."""

import os
import subprocess
import sys
import textwrap

import pytest

from swirl_jax.checkpoints.gguf_export import export_gguf
from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
from swirl_jax.models import init_model, model_config
from swirl_jax.testing.subprocesses import cpu_env, free_port
from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer

pytestmark = pytest.mark.multiprocess

SCRIPT = textwrap.dedent('''
    import json, os, sys
    from swirl_jax import runtime
    runtime.setup_runtime(runtime.RuntimeConfig(coordinator_address=f"127.0.0.1:{sys.argv[2]}", num_processes=2,
                                                process_id=int(sys.argv[3])))
    from swirl_jax import partitioning
    from swirl_jax.checkpoints.gguf_export import export_gguf
    from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
    from swirl_jax.checkpoints.safetensors_export import export_hf
    from swirl_jax.models import init_model, model_config
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=4, tensor=2))
    model = partitioning.shard_model(init_model(model_config("tiny_qwen3"), seed=0), mesh, partitioning.DEFAULT_RULES)
    for i in range(3):
      export_hf(model, f"{sys.argv[1]}.{i}", dtype="bfloat16", max_shard_bytes=60_000)
      print("exported", i, flush=True)
    export_gguf(model, f"{sys.argv[1]}.gguf", HFTokenizerVocabulary(sys.argv[4]), dtype="q8_0")
    print("exported gguf", flush=True)
''')


def test_two_processes_on_one_core_export_without_waiting_on_each_other(tmp_path):
  """A hang, not a speed limit, is what the timeout catches: the exports take about 20 s here."""
  script = tmp_path / "export_script.py"
  script.write_text(SCRIPT)
  core = min(os.sched_getaffinity(0))
  env = {**cpu_env(tmp_path), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the same programs compiled fresh in both processes
  port = str(free_port())
  tokenizer = write_tiny_hf_tokenizer(str(tmp_path / "tokenizer"), "qwen3")
  procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "hf"), port, str(i), tokenizer], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core})) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=600)[0].decode()[-2000:] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail("the 2-process export did not finish in 600 s: "
                + " | ".join(p.communicate()[0].decode()[-800:] for p in procs))
  assert all(p.returncode == 0 for p in procs), outputs
  assert all("exported gguf" in out for out in outputs)
  one = export_gguf(init_model(model_config("tiny_qwen3"), seed=0), str(tmp_path / "one.gguf"),
                    HFTokenizerVocabulary(tokenizer), dtype="q8_0")
  assert (tmp_path / "hf.gguf").read_bytes() == open(one, "rb").read()
  for i in range(3):
    written = sorted(os.listdir(tmp_path / f"hf.{i}"))
    assert "model.safetensors.index.json" in written and len(written) > 4
