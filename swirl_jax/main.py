"""The command line: `python -m swirl_jax.main --gin_file=... --gin.NAME=value --mode=generate`.

gin configures what a run does (model, task, sampler, episode, output); flags
pick the mode and the gin files. `--gin.NAME=VALUE` is shorthand for
`--gin_bindings=NAME=VALUE`, as in T5X.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import gin
import jax
from absl import app, flags, logging

# Everything gin can bind must be imported before the config is parsed.
from swirl_jax import (evaluation, generation, gin_flags, judging, multihost, partitioning, pipeline,  # noqa: F401
                       provenance, runtime, tasks)
from swirl_jax.checkpoints import gguf_export, policy, safetensors_export, train_state
from swirl_jax.data import filters, seqio_tasks
from swirl_jax.environment import calculator, episode, protocol, search  # noqa: F401
from swirl_jax.models import config  # noqa: F401
from swirl_jax.sampling import sampler  # noqa: F401
from swirl_jax.training import trainer  # noqa: F401

_MODE = flags.DEFINE_enum("mode", "pipeline", ["generate", "judge", "train", "evaluate", "pipeline", "export"],
                          "Which stage to run; pipeline runs them all in order, resumably; export writes the "
                          "gin policy (with load_policy.checkpoint_dir: a trained one) as an HF checkpoint.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-host runs (overrides "
    "RuntimeConfig.coordinator_address); on Cloud TPU use --distributed_tpu instead.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_DISTRIBUTED_TPU = flags.DEFINE_bool(
    "distributed_tpu", False, "Call jax.distributed.initialize() with no arguments (Cloud TPU slices: "
    "the runtime names the coordinator); sets RuntimeConfig.auto_detect. The launch scripts set it.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the whole traceback of a failure, not one line.")


def _print_json(value) -> None:
  if jax.process_index() == 0:
    print(json.dumps(value, indent=1), flush=True)


def _decoding_policy(rt: runtime.Runtime):
  """The gin policy for a stage that only decodes (Stage 1, evaluation): loaded straight into the
  sampling layout where one copies params (gin's SamplingLayout), in its mesh and dtype, so no
  training-layout copy is ever made; else on the run's mesh."""
  layout = partitioning.SamplingLayout()
  if not layout.copy_params:
    return policy.load_policy(mesh=rt.mesh, rules=rt.rules)
  return policy.load_policy(mesh=layout.mesh_over(rt.mesh), rules=rt.rules, param_dtype=layout.param_dtype)


def run_generate(rt: runtime.Runtime):
  """Stage 1 with the gin-configured policy, task and settings (GenerateConfig.output_dir...)."""
  task = tasks.build_task()  # the data is read and checked before the model loads
  config = generation.GenerateConfig()
  model, vocab = _decoding_policy(rt)
  task.use_vocabulary(vocab)
  summary = generation.generate(task, model, vocab, config, mesh=rt.mesh, rules=rt.rules)
  _print_json(summary)
  return summary


def run_judge(rt: runtime.Runtime):
  """Process and outcome verdicts for Stage 1's files (judge_directory.input_dir / output_dir)."""
  summary = judging.judge_directory(judge=judging.make_judge())
  _print_json(summary)
  return summary


@gin.configurable
def run_train(rt: runtime.Runtime, judged_dir: str | None = None, filter_strategy: str = "process",
              task_name: str | None = None):
  """Stage 2 on a SeqIO task: `task_name` (one registered by a module a gin file imports), or the
  trajectories of `judged_dir` kept by `filter_strategy` (registered as swirl:{task}:{filter})."""
  if (judged_dir is None) == (task_name is None):
    raise ValueError("run_train: set one of run_train.judged_dir (judged trajectories) or run_train.task_name "
                     "(a registered SeqIO task)")
  if filter_strategy not in filters.STRATEGIES:  # before the model loads
    raise ValueError(f"run_train.filter_strategy={filter_strategy!r}; use one of {filters.STRATEGIES}")
  train_config = trainer.TrainConfig()
  task = tasks.build_task()
  if task_name is None:
    data = seqio_tasks.register_judged(task.name, filter_strategy, judged_dir)
    task_name = data.for_mode(train_config.mode, train_config.share_prefixes)
  judge = judging.make_judge() if train_config.mode == "online" else None
  model, vocab = policy.load_policy(mesh=rt.mesh, rules=rt.rules)
  task.use_vocabulary(vocab)
  # Trained on Stage 1's trajectories of the task's training questions: those are recorded with each
  # checkpoint (a user's own SeqIO task records none).
  questions = [q.question for q in task.questions] if judged_dir is not None else None
  metrics = pipeline.build_trainer(model, vocab, task_name, task, judge, train_config, mesh=rt.mesh,
                                   rules=rt.rules, training_questions=questions).train()
  _print_json({"task": task_name, **metrics})
  return metrics


@gin.configurable
def run_evaluate(rt: runtime.Runtime, name: str = "model", checkpoint_dir: str | None = None,
                 allow_training_questions: bool = False):
  """The tool loop on the gin task's held-out split, graded; restores `checkpoint_dir` if given.
  Questions the checkpoint was trained on (recorded with it) are refused unless
  `allow_training_questions`."""
  task = tasks.build_task(split="test")
  trained_dir = checkpoint_dir or dict(gin.get_bindings("load_policy")).get("checkpoint_dir")
  if trained_dir and os.path.isdir(trained_dir) and not allow_training_questions:
    digests = train_state.training_question_digests(trained_dir)
    if digests:
      tasks.refuse_overlap(task.questions, training_digests=digests, where=f"questions {trained_dir} was trained on",
                           allowed_by="run_evaluate.allow_training_questions")
  judge = judging.make_judge(questions=task.questions, task=task)
  if checkpoint_dir and not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"run_evaluate.checkpoint_dir={checkpoint_dir!r} is not a directory")
  model, vocab = _decoding_policy(rt)
  task.use_vocabulary(vocab)
  trained = None
  if checkpoint_dir:
    trained = trainer.checkpoint_identity(checkpoint_dir, trainer.load_trained_params(model, checkpoint_dir))
  report = evaluation.evaluate(task, model, vocab, name, evaluation.EvalConfig(), judge, mesh=rt.mesh,
                               rules=rt.rules, model_id=policy.policy_identity(trained))
  if jax.process_index() == 0:
    evaluation.write_comparison([report], os.path.join(evaluation.EvalConfig().output_dir, name))
  _print_json(report)
  return report


@gin.configurable
def run_export(rt: runtime.Runtime, output_dir: str | None = None, dtype: str = "float32",
               max_shard_bytes: int = safetensors_export.MAX_SHARD_BYTES, format: str = "hf"):
  """The gin-configured policy (a trainer checkpoint's params with `load_policy.checkpoint_dir`) in
  `output_dir`: with format='hf', an HF checkpoint (config.json, the weights in files of at most
  `max_shard_bytes` with HF's index where there are several, the tokenizer's files); with
  format='gguf', one GGUF file, `output_dir`/model.gguf, that llama.cpp runs (dtype float32, float16,
  bfloat16 or q8_0)."""
  if not output_dir:
    raise ValueError("run_export.output_dir is not set: where to write the checkpoint")
  formats = {"hf": safetensors_export.DTYPES, "gguf": gguf_export.DTYPES}
  if format not in formats:
    raise ValueError(f"run_export.format={format!r}; use one of {sorted(formats)}")
  if dtype not in formats[format]:  # before the model loads
    raise ValueError(f"run_export.dtype={dtype!r}; format {format!r} takes one of {formats[format]}")
  model, vocab = policy.load_policy(mesh=rt.mesh, rules=rt.rules)
  if format == "gguf":
    if jax.process_index() == 0:
      os.makedirs(output_dir, exist_ok=True)
    exported = gguf_export.export_gguf(model, os.path.join(output_dir, "model.gguf"), vocab, dtype)
  else:
    exported = safetensors_export.export_hf(model, output_dir, vocab, dtype, max_shard_bytes)
  summary = {"exported": exported, "format": format, "policy": policy.policy_identity()}
  _print_json(summary)
  return summary


def runtime_config() -> runtime.RuntimeConfig:
  """gin's RuntimeConfig, with the multi-host flags (the launch scripts' interface) on top."""
  config = runtime.RuntimeConfig()
  if _DISTRIBUTED_TPU.value:
    config = dataclasses.replace(config, auto_detect=True, coordinator_address=None, num_processes=None,
                                 process_id=None)
  elif _COORDINATOR.value or _NUM_PROCESSES.value is not None:
    config = dataclasses.replace(config, coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  return config


def main(argv: list[str]):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    run_mode(_MODE.value)
  except multihost.Preempted as preempted:
    # A preemption notice: every process saved the same step; exit cleanly so the job is restarted.
    logging.warning("%s", preempted)
    print(str(preempted), flush=True)
  except Exception as error:  # noqa: BLE001 - every failure is one line unless --verbose
    if _VERBOSE.value:
      raise
    # One line a user can act on; --verbose shows where it came from.
    message = " ".join(str(error).split())
    message = re.sub(r" In call to configurable '([\w.]+)' \(<[^>]*>\)", r" (in \1)", message)
    print(f"swirl_jax: {type(error).__name__}: {message} (--verbose prints the traceback)", file=sys.stderr,
          flush=True)
    sys.exit(1)


def run_mode(mode: str):
  """Parses the gin files and bindings, sets up the runtime and runs one mode."""
  gin_flags.parse_gin()
  # Library logs go to a file (the pipeline's run_dir/log, or --log_dir); the terminal keeps progress,
  # warnings and errors.
  log_dir = flags.FLAGS.log_dir or (os.path.join(pipeline.PipelineConfig().run_dir, "log") if mode == "pipeline"
                                    else None)
  if log_dir:
    runtime.log_to_directory(log_dir)
  rt = runtime.setup_runtime(runtime_config())
  logging.info("gin config:\n%s", gin.config_str())
  modes = {"generate": run_generate, "judge": run_judge, "train": run_train, "evaluate": run_evaluate,
           "pipeline": lambda rt: pipeline.run_pipeline(rt, pipeline.PipelineConfig()), "export": run_export}
  return modes[mode](rt)


def run():
  """Console-script entry point."""
  gin_flags.run(main)


if __name__ == "__main__":
  run()
