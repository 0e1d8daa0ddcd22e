"""The whole pipeline on a tiny random Qwen3 and a tiny random Llama 3, loaded as users load theirs:
an HF directory (safetensors written by transformers, tokenizer.json and its configs), through the
command line. Generate, judge, online training and evaluation (`--mode=pipeline`), offline training
on the judged steps, and the export back to a directory transformers loads, model and tokenizer.
Then the pipeline on 2 processes gives the 1-process run's trajectories and params (Qwen3)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from swirl_jax.models import model_config
from swirl_jax.testing.subprocesses import free_port
from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer
from tests import hf_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {"qwen3": "tiny_qwen3", "llama3": "tiny_llama3"}
MARKERS = {"qwen3": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}


def hf_directory(path, family: str) -> str:
  """A tiny random checkpoint of `family`, as transformers writes it, with its tokenizer beside it."""
  model = hf_reference.random_hf_model(model_config(FAMILIES[family]))
  model.save_pretrained(str(path))
  return write_tiny_hf_tokenizer(str(path), family)


def bindings(model_dir: str, run_dir, steps: int = 3) -> list[str]:
  return [
      "load_policy.source='hf'", f"load_policy.path='{model_dir}'",
      "build_task.name='builtin_arithmetic'", "build_task.num_questions=6", "PromptTemplate.examples=()",
      "PromptTemplate.instructions='Solve.'", "build_task.arithmetic_max_steps=2", "make_judge.kind='rule'",
      f"PipelineConfig.run_dir='{run_dir}'", "PipelineConfig.filter_strategy='none'", "PipelineConfig.eval_questions=4",
      "GenerateConfig.samples_per_question=2", "GenerateConfig.rows=4", "GenerateConfig.capacity=384",
      "GenerateConfig.questions_per_shard=2", f"GenerateConfig.output_dir='{run_dir}/trajectories'",
      "EpisodeConfig.max_action_tokens=10", "EpisodeConfig.max_steps=2", "EpisodeConfig.temperature=1.0",
      "EpisodeConfig.on_malformed='feedback'", "EvalConfig.rows=4", "EvalConfig.capacity=384",
      "EvalConfig.max_action_tokens=10", "EvalConfig.questions_per_shard=2", f"EvalConfig.output_dir='{run_dir}/eval'",
      "TrainConfig.mode='online'", f"TrainConfig.steps={steps}", "TrainConfig.batch_size=4",
      "OnlineConfig.samples_per_state=2", "OnlineConfig.max_action_tokens=6", "TrainConfig.sequence_length=384",
      "OnlineConfig.temperature=1.0", "OptimizerConfig.learning_rate=1e-3", "OptimizerConfig.warmup_steps=1",
      "TrainConfig.checkpoint_every=100", "TrainConfig.log_every=1", f"TrainConfig.checkpoint_dir='{run_dir}/checkpoints'",
      f"run_train.judged_dir='{run_dir}/judged'", "run_train.filter_strategy='none'",
  ]


def cli(mode: str, gin: list[str], tmp, processes: int = 1, devices: int = 1) -> list[str]:
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "SWIRL_JAX_CACHE": str(tmp / "cache"), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  port = free_port()
  procs, logs = [], []
  for index in range(processes):
    command = [sys.executable, "-m", "swirl_jax.main", f"--mode={mode}"] + [f"--gin.{b}" for b in gin]
    if processes > 1:
      command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={index}"]
    log = tmp / f"{mode}-{len(list(tmp.glob('*.txt')))}-{index}.txt"
    logs.append(log)
    procs.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT))
  codes = [p.wait(timeout=1200) for p in procs]
  texts = [log.read_text() for log in logs]
  assert codes == [0] * processes, "\n".join(t[-4000:] for t in texts)
  return texts


def _params(checkpoint_dir, name):
  from flax import nnx
  from swirl_jax.models import init_model
  from swirl_jax.training.trainer import load_trained_params
  model = init_model(model_config(name), seed=0)
  step = load_trained_params(model, str(checkpoint_dir))
  return step, {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


def _trajectories(directory):
  from swirl_jax.data import trajectory_io
  return [(t.id, [(s.context_tokens, s.action_tokens, s.action_text) for s in t.steps])
          for t in sorted(trajectory_io.read_all(directory), key=lambda t: t.id)]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_the_pipeline_trains_offline_and_exports_each_family(tmp_path, family):
  import torch
  import transformers
  model_dir = hf_directory(tmp_path / "model", family)
  run = tmp_path / "run"
  cli("pipeline", bindings(model_dir, run), tmp_path)
  assert json.loads((run / "summary.json").read_text())["processes"] == 1
  for name in ("base", "trained"):
    assert json.loads((run / "eval" / name / "report.json").read_text())["questions"] == 4
  trajectories = _trajectories(run / "trajectories")
  assert len(trajectories) == 12
  # The prompts are the family's chat turns, tokenized by its tokenizer.json.
  from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
  vocab = HFTokenizerVocabulary(model_dir)
  first_context = vocab.decode(trajectories[0][1][0][0])
  assert first_context.endswith(MARKERS[family]) and "<start_of_turn>" not in first_context
  # Llama's prompts open with its BOS; Qwen's tokenizer has none, and no other id stands in for it.
  opening = trajectories[0][1][0][0][0]
  assert (opening == vocab.tokenizer.token_to_id("<|begin_of_text|>")) == (family == "llama3")
  assert vocab.decode([opening]).startswith("<|im_start|>" if family == "qwen3" else "<|begin_of_text|>")
  step, online = _params(run / "checkpoints", FAMILIES[family])
  assert step == 3
  # Offline training on the judged steps (the other Stage 2 mode), from the same checkpoint.
  offline = tmp_path / "offline"
  cli("train", bindings(model_dir, offline) + ["TrainConfig.mode='offline'", "TrainConfig.batch_size=2",
                                               f"run_train.judged_dir='{run}/judged'"], tmp_path)
  assert _params(offline / "checkpoints", FAMILIES[family])[0] == 3
  # The export: transformers loads the trained model and its tokenizer, and they agree with ours.
  exported = tmp_path / "exported"
  cli("export", bindings(model_dir, run) + [f"load_policy.checkpoint_dir='{run}/checkpoints'",
                                            f"run_export.output_dir='{exported}'"], tmp_path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported), attn_implementation="eager").eval()
  assert type(hf).__name__ == {"qwen3": "Qwen3ForCausalLM", "llama3": "LlamaForCausalLM"}[family]
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
  assert tokenizer.encode(first_context, add_special_tokens=False) == list(trajectories[0][1][0][0])
  generation = json.loads((exported / "generation_config.json").read_text())
  assert set(vocab.stop_ids) <= set(generation["eos_token_id"])
  from swirl_jax.checkpoints.safetensors_import import load_hf_checkpoint
  again = load_hf_checkpoint(str(exported))
  tokens = np.asarray([trajectories[0][1][0][0][:32]])
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
  np.testing.assert_allclose(np.asarray(again(tokens.astype(np.int32))), theirs, atol=1e-4, rtol=1e-4)
  from flax import nnx
  flat = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(again))}
  for name, value in online.items():
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  # The same checkpoint as one GGUF file: the GGUF importer reads back its params and its tokenizer.
  gguf_dir = tmp_path / "exported_gguf"
  cli("export", bindings(model_dir, run) + [f"load_policy.checkpoint_dir='{run}/checkpoints'",
                                            f"run_export.output_dir='{gguf_dir}'", "run_export.format='gguf'"], tmp_path)
  from swirl_jax.checkpoints.gguf_import import load_gguf
  from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
  loaded = load_gguf(str(gguf_dir / "model.gguf"))
  flat = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(loaded))}
  for name, value in online.items():
    np.testing.assert_allclose(flat[name], value, rtol=0, atol=1e-6, err_msg=name)
  gguf_vocab = vocabulary_from_gguf(str(gguf_dir / "model.gguf"), cache_dir=str(tmp_path / "cache"))
  assert gguf_vocab.encode(first_context) == vocab.encode(first_context)
  assert sorted(gguf_vocab.stop_ids) == sorted(vocab.stop_ids)


@pytest.mark.multiprocess
def test_the_qwen3_pipeline_on_two_processes_matches_one(tmp_path):
  model_dir = hf_directory(tmp_path / "model", "qwen3")
  one, two = tmp_path / "one", tmp_path / "two"
  cli("pipeline", bindings(model_dir, one, steps=2), tmp_path)
  cli("pipeline", bindings(model_dir, two, steps=2), tmp_path, processes=2)
  assert _trajectories(one / "trajectories") == _trajectories(two / "trajectories")
  (step_one, params_one), (step_two, params_two) = (_params(r / "checkpoints", "tiny_qwen3") for r in (one, two))
  assert step_one == step_two == 2
  for name in params_one:
    np.testing.assert_allclose(params_one[name], params_two[name], rtol=1e-5, atol=1e-5, err_msg=name)
