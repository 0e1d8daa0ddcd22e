"""Every gin file of the repository, loaded; one binding of each configurable it uses is overridden,
and the override is found in the object that the library builds from gin (as a run builds it).

Also: no gin-configurable object is built at import time (a default argument, a module constant),
where it would be made before gin has parsed and ignore every binding.
"""

import ast
import dataclasses
import glob
import importlib.util
import json
import os
import re
import sys

import gin
import pytest

from swirl_jax import evaluation, generation, judging, partitioning, pipeline, tasks
from swirl_jax.checkpoints import policy
from swirl_jax.environment import episode
from swirl_jax.models import NAMED_CONFIGS
from swirl_jax.scripted_demonstrations import NoiseConfig
from swirl_jax.training import objectives, online, optimizer, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(os.path.relpath(p, REPO) for pattern in ("gin/**/*.gin", "experiments/**/*.gin")
                   for p in glob.glob(os.path.join(REPO, pattern), recursive=True))
_BINDING = re.compile(r"^([A-Za-z_][\w.]*)\.(\w+)\s*=\s*(.+?)\s*(#.*)?$")
_INCLUDE = re.compile(r"^include\s+'([^']+)'")


def _miniature_module():
  spec = importlib.util.spec_from_file_location("miniature_run", os.path.join(REPO, "experiments/miniature/run.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
  spec.loader.exec_module(module)
  return module


MINIATURE = _miniature_module()


def bindings_of(path: str) -> dict[str, dict[str, str]]:
  """{configurable: {parameter: value text}} of a gin file and the files it includes."""
  out: dict[str, dict[str, str]] = {}
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    for line in f:
      include = _INCLUDE.match(line)
      if include:
        for name, params in bindings_of(include.group(1)).items():
          out.setdefault(name, {}).update(params)
      binding = _BINDING.match(line.strip())
      if binding:
        out.setdefault(binding.group(1), {})[binding.group(2)] = binding.group(3)
  return out


def _hotpotqa_file(tmp_path) -> str:
  """Three HotPotQA records in the released layout."""
  records = [{"_id": f"h{i}", "question": f"Where does person {i} live?", "answer": f"town {i}",
              "context": [[f"Person {i}", [f"Person {i} lives in town {i}."]]]} for i in range(3)]
  path = tmp_path / "hotpot.json"
  path.write_text(json.dumps(records))
  return str(path)


def _name_of(model) -> str:
  return next(name for name, config in NAMED_CONFIGS.items() if config == model.config)


def _load_policy():
  return policy.load_policy()


def _judge_kind(judge) -> str:
  return {"RuleJudge": "rule", "HttpJudge": "http", "ModelJudge": "model"}[type(judge).__name__]


# (configurable, parameter): (new value given the file's value, how a run builds the object, what the
# object says the parameter is). A configurable is overridden through its first entry that the file
# binds, else its first entry.
OVERRIDES = {
    ("build_task", "num_questions"): (lambda old: 3, tasks.build_task, lambda task: len(task.questions)),
    ("build_task", "name"): (
        lambda old: {"gsm8k": "builtin_arithmetic", "hotpotqa": "builtin_encyclopedia",
                     "builtin_encyclopedia": "hotpotqa", "builtin_arithmetic": "builtin_encyclopedia"}[old],
        tasks.build_task, lambda task: task.name),
    ("BM25Search", "top_k"): (lambda old: 2, tasks.build_task, lambda task: task.tools[0].top_k),
    ("load_policy", "source"): (lambda old: "init", _load_policy,
                                lambda built: "init" if built[1].piece_count < 1000 else "not the tiny tokenizer"),
    ("model_config", "name"): (lambda old: "tiny" if old == "tiny_gemma2" else "tiny_gemma2",
                               lambda: policy.load_policy(source="init"), lambda built: _name_of(built[0])),
    ("make_judge", "kind"): (lambda old: {"rule": "http", "http": "model"}[old], judging.make_judge, _judge_kind),
    ("MeshConfig", "fsdp"): (lambda old: 2, partitioning.make_mesh, lambda mesh: mesh.shape["fsdp"]),
    ("PipelineConfig", "eval_questions"): (lambda old: 7, pipeline.PipelineConfig, None),
    ("GenerateConfig", "samples_per_question"): (lambda old: 3, generation.GenerateConfig, None),
    ("EpisodeConfig", "temperature"): (lambda old: 0.3, episode.EpisodeConfig, None),
    ("EvalConfig", "rows"): (lambda old: 4, evaluation.EvalConfig, None),
    ("TrainConfig", "steps"): (lambda old: 3, trainer.TrainConfig, None),
    ("OnlineConfig", "samples_per_state"): (lambda old: 2, online.OnlineConfig, None),
    ("OptimizerConfig", "learning_rate"): (lambda old: 3e-4, optimizer.OptimizerConfig, None),
    ("SftConfig", "context_weight"): (lambda old: 0.5, objectives.SftConfig, None),
    ("NoiseConfig", "step_noise"): (lambda old: 0.1, NoiseConfig, None),
    ("MiniatureConfig", "states_per_strategy"): (lambda old: 64, MINIATURE.MiniatureConfig, None),
    ("MiniatureConfig", "run_dir"): (lambda old: "runs/elsewhere", MINIATURE.MiniatureConfig, None),
}


def chosen_overrides(bound: dict[str, dict[str, str]]) -> dict[tuple[str, str], object]:
  """One (configurable, parameter) -> new value for each configurable the file binds."""
  chosen = {}
  for configurable, params in bound.items():
    entries = [key for key in OVERRIDES if key[0] == configurable]
    assert entries, f"tests/test_gin_files.py has no override for {configurable} (add one to OVERRIDES)"
    key = next((k for k in entries if k[1] in params), entries[0])
    old = params.get(key[1])
    chosen[key] = OVERRIDES[key][0](None if old is None else gin.config.parse_value(old))
  return chosen


@pytest.fixture
def clean_gin():
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  yield
  gin.clear_config()


@pytest.mark.parametrize("path", GIN_FILES)
def test_every_override_reaches_the_object_built(path, clean_gin, tokenizer_gguf, tmp_path):
  bound = bindings_of(path)
  assert bound, f"{path} binds nothing"
  overrides = chosen_overrides(bound)
  gin.parse_config_file(os.path.join(REPO, path))
  # What the test adds so that objects build here: a small tokenizer, a local judge cache and endpoint.
  support = {"load_policy.tokenizer_gguf": tokenizer_gguf, "make_judge.cache_dir": str(tmp_path / "judge"),
             "make_judge.http_base_url": "http://127.0.0.1:9/v1", "make_judge.http_model": "m"}
  if "load_policy" in bound:
    support["model_config.name"] = "tiny"  # a random tiny model stands in for the file's
  if overrides.get(("build_task", "name")) == "hotpotqa":
    support["build_task.path"] = _hotpotqa_file(tmp_path)
  for name, value in support.items():
    gin.bind_parameter(name, value)
  for (configurable, param), value in overrides.items():
    gin.bind_parameter(f"{configurable}.{param}", value)
  for (configurable, param), value in overrides.items():
    _, build, read = OVERRIDES[(configurable, param)]
    if (configurable, param) == ("model_config", "name") and "load_policy" in bound:
      build = _load_policy
    built = build()
    found = read(built) if read else getattr(built, param)
    assert found == value, f"{path}: {configurable}.{param} = {value!r} was bound, the object built has {found!r}"


def test_every_gin_file_is_covered():
  assert {"gin/experiments/quickstart.gin", "gin/models/tiny.gin", "gin/tasks/hotpotqa.gin",
          "experiments/miniature/fast.gin"} <= set(GIN_FILES)


def _configurable_names() -> set[str]:
  names = set()
  for path in glob.glob(os.path.join(REPO, "swirl_jax", "**", "*.py"), recursive=True):
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
      if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and any(
          "configurable" in ast.unparse(d) for d in node.decorator_list):
        names.add(node.name)
  return names


def configurables_built_at_import(source: str, names: set[str]) -> list[int]:
  """Lines where a gin configurable is called in a default argument or at module level."""
  lines = []
  tree = ast.parse(source)
  spots = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      spots += node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
  for spot in spots:
    for call in ast.walk(spot):
      if isinstance(call, ast.Call):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name in names:
          lines.append(call.lineno)
  return lines


def test_no_configurable_is_built_at_import_time():
  names = _configurable_names()
  assert {"GenerateConfig", "MeshConfig", "build_task"} <= names
  found = []
  for path in glob.glob(os.path.join(REPO, "swirl_jax", "**", "*.py"), recursive=True) + [
      os.path.join(REPO, "experiments", "miniature", "run.py")]:
    for line in configurables_built_at_import(open(path, encoding="utf-8").read(), names):
      found.append(f"{os.path.relpath(path, REPO)}:{line}")
  assert not found, "gin configurables built before gin parses: " + ", ".join(found)


def test_the_import_time_check_finds_a_default_argument():
  names = {"GenerateConfig"}
  source = "def generate(config=GenerateConfig()):\n  pass\nDEFAULT = GenerateConfig()\n"
  assert sorted(configurables_built_at_import(source, names)) == [1, 3]
