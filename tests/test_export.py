"""A trained policy taken elsewhere: HF safetensors + config.json that transformers loads, with the
same logits (tiny Gemma 2, Gemma 3, Qwen3 and Llama 3 models, trained by our trainer) and the same
greedy tokens (Gemma 3 270M)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from swirl_jax.checkpoints import safetensors_export
from swirl_jax.checkpoints.policy import load_policy
from swirl_jax.checkpoints.safetensors_import import load_hf_checkpoint
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.uncached import greedy_decode_uncached
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.testing.subprocesses import cpu_env
from swirl_jax.training.trainer import OptimizerConfig, TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained(name: str, tmp_path, **overrides):
  """A tiny model after three offline updates of our trainer (norms and weights moved off their init)."""
  config = TrainConfig(mode="offline", steps=3, batch_size=2, sequence_length=96, checkpoint_every=3,
                       checkpoint_dir=str(tmp_path / "ckpt"))
  model = init_model(model_config(name, **overrides), seed=1)
  Trainer(model, known_trajectories(), config, optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=1)).train()
  return model


def _our_logits(model, tokens_BxL):
  hidden = model.hidden_states(jnp.asarray(tokens_BxL))
  return np.asarray(jax.vmap(model.logits_at)(hidden))


def _flat(model):
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("name,overrides", [("tiny", {}), pytest.param("tiny_gemma2", {}, marks=pytest.mark.slow),
                                            pytest.param("tiny", {"scan_layers": True}, marks=pytest.mark.slow),
                                            ("tiny_llama3", {}), pytest.param("tiny_qwen3", {}, marks=pytest.mark.slow)])
def test_a_trained_tiny_model_loads_in_transformers_with_our_logits(tmp_path, name, overrides):
  model = _trained(name, tmp_path, **overrides)
  before = _flat(init_model(model_config(name, **overrides), seed=1))
  assert any(not np.allclose(v, before[p]) for p, v in _flat(model).items() if "norm" in "/".join(map(str, p)))
  directory = safetensors_export.export_hf(model, str(tmp_path / "hf"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
  assert type(hf).__name__ == {"tiny_gemma2": "Gemma2ForCausalLM", "tiny_qwen3": "Qwen3ForCausalLM",
                                "tiny_llama3": "LlamaForCausalLM"}.get(name, "Gemma3ForCausalLM")
  tokens = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 40))
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
  np.testing.assert_allclose(theirs, _our_logits(model, tokens), atol=1e-4, rtol=1e-4)
  # And back through our importer: the same variables.
  again = load_hf_checkpoint(directory, scan_layers=model.config.scan_layers)
  for path, value in _flat(model).items():
    np.testing.assert_array_equal(_flat(again)[path], value)


@pytest.mark.slow
def test_export_mode_writes_a_trainer_checkpoint_that_loads_back(tmp_path, tokenizer_gguf):
  """`--mode=export` on a trainer checkpoint: the params in the HF files are the checkpoint's."""
  model = _trained("tiny", tmp_path)
  out = tmp_path / "exported"
  done = subprocess.run(
      [sys.executable, "-m", "swirl_jax.main", "--mode=export", "--gin.load_policy.source='init'",
       "--gin.model_config.name='tiny'", f"--gin.load_policy.tokenizer_gguf='{tokenizer_gguf}'",
       f"--gin.load_policy.checkpoint_dir='{tmp_path / 'ckpt'}'", f"--gin.run_export.output_dir='{out}'"],
      cwd=REPO, env=cpu_env(tmp_path), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout[done.stdout.index("{"):])["exported"] == str(out)
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.model"]
  loaded, vocab = load_policy(source="hf", path=str(out))
  for path, value in _flat(model).items():
    np.testing.assert_array_equal(_flat(loaded)[path], value)
  assert vocab.encode("12 + 7") and vocab.eos_id == 1


def test_export_refuses_an_unknown_dtype(tmp_path):
  with pytest.raises(ValueError, match="dtype='float16'"):
    safetensors_export.export_hf(init_model(model_config("tiny")), str(tmp_path), dtype="float16")


@pytest.mark.slow
def test_gemma3_270m_exported_gives_transformers_our_greedy_tokens(gemma3_270m, tmp_path):
  model, vocab = gemma3_270m
  directory = safetensors_export.export_hf(model, str(tmp_path / "gemma3_270m"), vocab)
  config = json.loads(open(os.path.join(directory, "config.json")).read())
  assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 18
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
  prompts = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "def fibonacci(n):"]
  ids = [[vocab.bos_id] + list(vocab.encode(p)) for p in prompts]
  ours = greedy_decode_uncached(model, ids, 12)
  for prompt_ids, our_tokens in zip(ids, ours):
    with torch.no_grad():
      out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=len(our_tokens), do_sample=False)
    assert out[0, len(prompt_ids):].tolist() == our_tokens, vocab.decode(our_tokens)


@pytest.mark.slow
def test_an_export_with_rope_scaling_reads_alike_in_both_rope_layouts_and_stops_at_the_turn_end(
    tmp_path, gemma3_270m_vocabulary):
  """Global layers' RoPE scaled by 8 (as in Gemma 3 4B-27B): transformers computes our logits from the
  export's `rope_parameters` and, with those removed, from the older `rope_scaling` fields; the eos ids
  hold <end_of_turn>, and generation_config.json says so too."""
  vocab = gemma3_270m_vocabulary
  model = init_model(model_config("tiny", global_rope_scale=8.0, vocab_size=vocab.piece_count), seed=2)
  directory = safetensors_export.export_hf(model, str(tmp_path / "hf"), vocab=vocab)
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  end_of_turn = vocab.encode("<end_of_turn>")
  assert len(end_of_turn) == 1 and config["eos_token_id"] == [vocab.eos_id, end_of_turn[0]]
  assert config["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
  generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert generation["eos_token_id"] == [vocab.eos_id, end_of_turn[0]]
  assert transformers.GenerationConfig.from_pretrained(directory).eos_token_id == [vocab.eos_id, end_of_turn[0]]
  tokens = np.random.default_rng(0).integers(3, 4000, (2, 300))  # past the tiny window: global layers matter
  ours = _our_logits(model, tokens)
  older = tmp_path / "older"
  older.mkdir()
  for name in ("model.safetensors", "tokenizer.model"):
    (older / name).write_bytes((tmp_path / "hf" / name).read_bytes())
  (older / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "rope_parameters"}))
  for where in (directory, str(older)):
    hf = transformers.AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager").eval()
    with torch.no_grad():
      theirs = hf(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4, err_msg=where)


@pytest.mark.parametrize("overrides", [{}, pytest.param({"scan_layers": True}, marks=pytest.mark.slow)])
def test_a_sharded_export_keeps_files_under_the_limit_with_an_index_and_reads_back(tmp_path, overrides):
  """Streamed tensor by tensor into files of at most max_shard_bytes, with HF's index; read back by
  the safetensors package, our importer and transformers (the same logits), also from scanned
  layers (each layer sliced out of its stack on device). A later single-file export into the same
  directory leaves no stale shard or index behind."""
  model = init_model(model_config("tiny", **overrides), seed=3)
  limit = 40_000
  directory = safetensors_export.export_hf(model, str(tmp_path / "hf"), dtype="bfloat16", max_shard_bytes=limit)
  index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
  largest = model.config.vocab_size * model.config.embed_dim * 2  # the embedding, alone in its file
  total = 0
  for name in files:
    size = os.path.getsize(tmp_path / "hf" / name)
    with safe_open(str(tmp_path / "hf" / name), framework="numpy") as f:
      held = sum(f.get_slice(k).get_shape()[0] * int(np.prod(f.get_slice(k).get_shape()[1:])) * 2 for k in f.keys())
      assert all(index["weight_map"][k] == name for k in f.keys())
    assert held <= limit or held == largest, (name, held)
    assert size < held + 4096  # the header and the data, nothing else
    total += held
  assert index["metadata"]["total_size"] == total
  assert sorted(os.listdir(tmp_path / "hf")) == sorted(files + ["config.json", "model.safetensors.index.json"])
  again = load_hf_checkpoint(directory, scan_layers=model.config.scan_layers)
  for path, value in _flat(model).items():
    np.testing.assert_array_equal(_flat(again)[path], value.astype(jnp.bfloat16).astype(np.float32))
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                         torch_dtype=torch.float32).eval()
  tokens = np.random.default_rng(1).integers(3, model.config.vocab_size, (1, 24))
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
  np.testing.assert_allclose(theirs, _our_logits(again, tokens), atol=1e-4, rtol=1e-4)
  safetensors_export.export_hf(model, directory)
  assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]


def test_run_export_refuses_a_format_or_dtype_before_the_model_loads(tmp_path):
  from swirl_jax import main
  with pytest.raises(ValueError, match="run_export.format='onnx'"):
    main.run_export(None, output_dir=str(tmp_path), format="onnx")
  with pytest.raises(ValueError, match="run_export.dtype='q8_0'; format 'hf'"):
    main.run_export(None, output_dir=str(tmp_path), dtype="q8_0")
  with pytest.raises(ValueError, match="run_export.dtype='int8'; format 'gguf'"):
    main.run_export(None, output_dir=str(tmp_path), dtype="int8", format="gguf")
