"""The miniature reproduction: SWiRL's claims on the built-in tasks, from nothing, on a CPU.

  python experiments/miniature/run.py --gin_file=experiments/miniature/miniature.gin [--gin.NAME=VALUE]

1. A 1,024-piece vocabulary and noisy demonstrations of both built-in tasks;
   SFT of a `tiny_2m` policy on them: the base policy.
2. Per task: Stage 1 (N samples per training question), the rule judge, the
   four filters; Stage 2 online step-wise RL from the base for each filter on
   the same number of states; the SFT baseline (logged actions, weight 1) on
   each filter's data, on the same number of states.
3. Every model on held-out questions of its task with the tool loop; the
   process-filtered SWiRL models also on the other task (cross-task rows).
4. results.json, results.md (the tables) and results.png under the run dir.

Every stage skips what its outputs already hold (checkpoints, shards, reports),
so a killed run, started again, resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import gin
import jax

from swirl_jax import atomic_io, evaluation, generation, gin_flags, judging, partitioning, runtime, tasks
from swirl_jax import scripted_demonstrations as demonstrations
from swirl_jax.checkpoints.policy import load_policy
from swirl_jax.checkpoints.vocabulary_training import train_vocabulary
from swirl_jax.data import filters, trajectory_io
from swirl_jax.environment import protocol
from swirl_jax.environment.episode import EpisodeConfig
from swirl_jax.pipeline import build_trainer
from swirl_jax.rewards.rule_judge import RuleJudge
from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, SftConfig, TrainConfig, load_trained_params

# One line each: a policy trained from scratch needs no worked examples.
INSTRUCTIONS = {"builtin_arithmetic": "Solve the problem with the calculator, one step per turn.",
                "builtin_encyclopedia": "Answer the question with the search tool, one step per turn."}
SHORT = {"builtin_arithmetic": "calculator", "builtin_encyclopedia": "search"}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MiniatureConfig:
  run_dir: str = "runs/miniature"
  model: str = "tiny_2m"
  vocab_size: int = 1024
  seed: int = 0
  tasks: tuple[str, ...] = ("builtin_arithmetic", "builtin_encyclopedia")
  encyclopedia_organizations: int = 600  # 4 questions each; 30% held out
  arithmetic_max_steps: int = 6  # problems take 2 to this many calculator steps
  # The base policy: SFT on noisy demonstrations (NoiseConfig) of both tasks.
  demo_arithmetic_questions: int = 3000
  sft_steps: int = 420
  sft_rows: int = 16  # rows of sequence_length tokens, packed with whole demonstrations
  sft_learning_rate: float = 2e-3
  sft_context_weight: float = 1.0  # also learn the prompts and tool results (a model from scratch)
  sequence_length: int = 512
  # Stage 1.
  stage1_questions: int = 300  # per task, training questions the demonstrations did not use
  samples_per_question: int = 5
  stage1_temperature: float = 0.5
  # Stage 2 and the SFT baseline: every filter trains on the same number of states.
  filters: tuple[str, ...] = ("none", "process", "outcome", "process_and_outcome")
  states_per_strategy: int = 384
  rl_batch: int = 16  # states per step
  rl_samples: int = 4  # G fresh actions per state
  rl_temperature: float = 1.0
  rl_learning_rate: float = 1e-4
  baseline_batch: int = 16  # trajectories per SFT-baseline step
  baseline_learning_rate: float = 1e-4
  sft_baseline: bool = True
  # Evaluation.
  eval_questions: int = 500  # per task
  eval_temperature: float = 0.0  # greedy
  eval_rows: int = 128
  max_action_tokens: int = 32
  cross_task_filters: tuple[str, ...] = ("process",)

  def __post_init__(self):
    unknown = [t for t in self.tasks if t not in INSTRUCTIONS]
    if unknown:
      raise ValueError(f"MiniatureConfig.tasks: {unknown} are not built-in tasks ({sorted(INSTRUCTIONS)})")
    bad = [f for f in self.filters if f not in filters.STRATEGIES]
    if bad:
      raise ValueError(f"MiniatureConfig.filters: {bad} are not filters ({filters.STRATEGIES})")


def build(name: str, split: str, config: MiniatureConfig, vocab=None, num_questions: int | None = None):
  return tasks.build_task(name, split=split, num_questions=num_questions, seed=config.seed,
                          template=protocol.PromptTemplate(INSTRUCTIONS[name], ()),
                          encyclopedia_organizations=config.encyclopedia_organizations,
                          arithmetic_max_steps=config.arithmetic_max_steps, vocab=vocab)


class Miniature:
  """The run's tasks, judge, base policy and the stages that use them."""

  def __init__(self, config: MiniatureConfig, rt: runtime.Runtime | None = None):
    self.config = config
    self.rt = rt or runtime.Runtime(mesh=None, rules=partitioning.DEFAULT_RULES)
    self.start = time.perf_counter()
    os.makedirs(config.run_dir, exist_ok=True)
    self.path = lambda *parts: os.path.join(config.run_dir, *parts)

  def log(self, message: str) -> None:
    print(f"[{time.perf_counter() - self.start:7.1f} s] {message}", flush=True)

  # -- data ------------------------------------------------------------------

  def splits(self, vocab=None) -> dict[str, dict[str, tasks.Task]]:
    """Per task: demo (SFT of the base), train (Stage 1) and test (held out) questions."""
    c, out = self.config, {}
    for name in c.tasks:
      if name == "builtin_arithmetic":
        demo = build(name, "demo", c, vocab, c.demo_arithmetic_questions)
        train = build(name, "train", c, vocab, c.stage1_questions)
      else:
        full = build(name, "train", c, vocab)
        demo = dataclasses.replace(full, questions=full.questions[c.stage1_questions:])
        train = dataclasses.replace(full, questions=full.questions[:c.stage1_questions])
      test = build(name, "test", c, vocab, c.eval_questions)
      tasks.check_held_out(train, test)
      tasks.check_held_out(demo, test)
      if len(test.questions) < c.eval_questions:
        raise ValueError(f"{name}: only {len(test.questions)} held-out questions; raise "
                         "MiniatureConfig.encyclopedia_organizations")
      out[name] = {"demo": demo, "train": train, "test": test}
    return out

  def vocabulary(self):
    """Trained on the prompts, gold actions and tool results of the demonstration questions."""
    texts = []
    for name, split in self.splits().items():
      for task in split.values():
        texts += [task.template.prompt(q.question) for q in task.questions]
        tag = task.tools[0].tag
        texts += [protocol.tagged(tag, s) + "\n" + protocol.tool_result(s, "0.5") for q in task.questions
                  for s in q.gold_steps]
        texts += [f"{p.title}: {p.text}" for p in task.passages]
    return train_vocabulary(texts, self.path("vocabulary.model"), self.config.vocab_size)

  # -- models ----------------------------------------------------------------

  def fresh_model(self):
    model, _ = load_policy(source="init", config_name=self.config.model,
                           tokenizer_model=self.path("vocabulary.model"), seed=self.config.seed,
                           vocab_size=self.config.vocab_size, mesh=self.rt.mesh, rules=self.rt.rules)
    return model

  def train(self, name: str, trajectories, train_task, judge, config: TrainConfig, start_from: str | None,
            optimizer: OptimizerConfig, online_config: OnlineConfig | None = None, sft: SftConfig | None = None):
    """A model trained from `start_from`'s checkpoint (or from scratch); resumes its own checkpoint."""
    model = self.fresh_model()
    if start_from is not None:
      load_trained_params(model, start_from)
    directory = self.path("models", name)
    config = dataclasses.replace(config, checkpoint_dir=os.path.join(directory, "checkpoints"),
                                 seed=self.config.seed, keep_checkpoints=1)
    online_config = dataclasses.replace(online_config or OnlineConfig(),
                                        max_action_tokens=self.config.max_action_tokens)
    trainer = build_trainer(model, self.vocab, trajectories, train_task, judge, config, optimizer=optimizer,
                            online_config=online_config, sft=sft or SftConfig(),
                            metrics_dir=os.path.join(directory, "metrics"), mesh=self.rt.mesh, rules=self.rt.rules,
                            model_id={"miniature": self.config.run_dir, "start_from": start_from})
    if trainer.checkpoints.latest_step() != config.steps:
      self.log(f"training {name}: {config.mode}, {config.steps} steps on {len(trajectories)} trajectories")
      trainer.train()
    else:
      trainer.restore_latest()
    return model

  @property
  def capacity(self) -> int:
    """Tokens per episode: Stage 1, evaluation, and the rows that train on Stage 1 data."""
    return self.config.sequence_length + 2 * self.config.max_action_tokens

  def evaluate(self, model, name: str, task: tasks.Task) -> dict:
    c = self.config
    eval_config = evaluation.EvalConfig(output_dir=self.path("eval", SHORT[task.name]), rows=c.eval_rows,
                                        capacity=self.capacity,
                                        temperature=c.eval_temperature, max_action_tokens=c.max_action_tokens)
    report = evaluation.evaluate(task, model, self.vocab, name, eval_config, self.judge, mesh=self.rt.mesh,
                                 rules=self.rt.rules)
    self.log(f"{name} on {SHORT[task.name]}: accuracy {report['accuracy']:.3f} "
             f"[{report['accuracy_95ci'][0]:.3f}, {report['accuracy_95ci'][1]:.3f}], "
             f"GOOD steps {report['good_step_share']:.3f}, mean steps {report['mean_steps']:.2f}")
    return report

  # -- the run ---------------------------------------------------------------

  def run(self) -> dict:
    """The four stages in order: base policy, Stage 1, Stage 2 per filter, results."""
    self.vocab = self.vocabulary()
    split = self.splits(self.vocab)
    every = [q for s in split.values() for t in s.values() for q in t.questions]
    self.judge = RuleJudge(every, [title for s in split.values() for title in s["test"].titles])
    base, noise = self.base_policy(split)
    reports = [self.evaluate(base, "base", s["test"]) | {"method": "base", "filter": "-", "trained_on": "-"}
               for s in split.values()]
    stage1 = {name: self.stage1(name, s["train"], base) for name, s in split.items()}
    for name, s in split.items():
      for strategy in self.config.filters:
        kept = filters.filter_trajectories(stage1[name]["trajectories"], strategy)
        if not kept:
          self.log(f"{strategy} on {SHORT[name]}: the filter kept no trajectory; no model")
          continue
        others = [split[o]["test"] for o in split if o != name]
        reports += self.stage2(name, strategy, kept, s["train"], s["test"], others)
    return self.write_results(reports, noise, stage1)

  def base_policy(self, split) -> tuple[object, dict]:
    """[1/4] SFT of a fresh model on noisy demonstrations of every task; and the noise counts."""
    c = self.config
    self.log(f"[1/4] the base policy: SFT on noisy demonstrations of {', '.join(SHORT[n] for n in split)}")
    demos, noise = [], {}
    for name, s in split.items():
      made, noise[name] = demonstrations.demonstrations(s["demo"], self.vocab, seed=c.seed)
      demos += [t for t in made if t.num_tokens <= c.sequence_length]
    sft = TrainConfig(mode="sft", steps=c.sft_steps, batch_size=c.sft_rows, pack_rows=True,
                      sequence_length=c.sequence_length, checkpoint_every=max(1, c.sft_steps // 4), log_every=10)
    base = self.train("base", demos, next(iter(split.values()))["train"], self.judge, sft, None,
                      OptimizerConfig(learning_rate=c.sft_learning_rate, warmup_steps=max(1, c.sft_steps // 20)),
                      sft=SftConfig(context_weight=c.sft_context_weight))
    return base, noise

  def stage1(self, name: str, train_task: tasks.Task, base) -> dict:
    """[2/4] N samples per training question from the base, judged by the rule judge."""
    c = self.config
    self.log(f"[2/4] Stage 1 on {SHORT[name]}: {len(train_task.questions)} questions x {c.samples_per_question}")
    out = self.path("stage1", SHORT[name])
    gen = generation.GenerateConfig(output_dir=os.path.join(out, "trajectories"),
                                    samples_per_question=c.samples_per_question, rows=c.eval_rows,
                                    capacity=self.capacity, questions_per_shard=50, seed=c.seed)
    generation.generate(train_task, base, self.vocab, gen, EpisodeConfig(
        temperature=c.stage1_temperature, max_action_tokens=c.max_action_tokens), mesh=self.rt.mesh,
        rules=self.rt.rules)
    summary = judging.judge_directory(os.path.join(out, "trajectories"), os.path.join(out, "judged"), self.judge)
    self.log(f"Stage 1 on {SHORT[name]}: GOOD steps {summary['good_step_share']}, "
             f"kept per filter {summary['filter_survival']}")
    return {"judged": summary, "trajectories": list(trajectory_io.read_all(os.path.join(out, "judged")))}

  def stage2(self, name: str, strategy: str, kept, train_task: tasks.Task, test_task: tasks.Task,
             other_tests: list[tasks.Task]) -> list[dict]:
    """[3/4] SWiRL (online RL from the base) on one filter's states, and the SFT baseline on the same
    data; the reports of both, SWiRL's also on the other tasks where the filter is a cross-task one."""
    c, base_dir = self.config, self.path("models", "base", "checkpoints")
    tag, facts = f"{SHORT[name]}-{strategy}", {"filter": strategy, "trained_on": name}
    self.log(f"[3/4] SWiRL {SHORT[name]}/{strategy}: online RL on {c.states_per_strategy} states")
    rl = TrainConfig(mode="online", steps=c.states_per_strategy // c.rl_batch, batch_size=c.rl_batch * c.rl_samples,
                     sequence_length=self.capacity, checkpoint_every=10_000, log_every=4)
    model = self.train(f"swirl-{tag}", kept, train_task, self.judge, rl, base_dir,
                       OptimizerConfig(learning_rate=c.rl_learning_rate, warmup_steps=1),
                       OnlineConfig(samples_per_state=c.rl_samples, temperature=c.rl_temperature, baseline="rloo"))
    evaluated_on = [test_task] + (other_tests if strategy in c.cross_task_filters else [])
    reports = [self.evaluate(model, f"swirl-{tag}", t) | {"method": "swirl", **facts} for t in evaluated_on]
    if c.sft_baseline:
      steps_per_trajectory = sum(len(t.steps) for t in kept) / len(kept)
      steps = max(1, math.ceil(c.states_per_strategy / (c.baseline_batch * steps_per_trajectory)))
      sft = TrainConfig(mode="sft", steps=steps, batch_size=c.baseline_batch, sequence_length=self.capacity,
                        checkpoint_every=10_000, log_every=4)
      model = self.train(f"sft-{tag}", kept, train_task, self.judge, sft, base_dir,
                         OptimizerConfig(learning_rate=c.baseline_learning_rate, warmup_steps=1))
      reports.append(self.evaluate(model, f"sft-{tag}", test_task) | {"method": "sft", **facts})
    return reports

  def write_results(self, reports: list[dict], noise: dict, stage1: dict) -> dict:
    """[4/4] results.json, results.md (the tables) and results.png."""
    self.log("[4/4] results")
    results = {"config": dataclasses.asdict(self.config), "noise": dataclasses.asdict(demonstrations.NoiseConfig()),
               "demonstration_noise_counts": noise,
               "stage1": {SHORT[n]: v["judged"] for n, v in stage1.items()},
               "reports": reports, "seconds": round(time.perf_counter() - self.start, 1)}
    results["claims"] = claims(reports)
    with atomic_io.atomic_open(self.path("results.json")) as f:
      json.dump(results, f, indent=1)
    table = results_table(results)
    with atomic_io.atomic_open(self.path("results.md")) as f:
      f.write(table)
    results_chart(reports, self.path("results.png"))
    print("\n" + table)
    print("\n".join(summary_lines(results, self.config.run_dir)), flush=True)
    return results


def _find(reports, method, strategy, trained_on, task):
  return next((r for r in reports if r["method"] == method and r["filter"] == strategy
               and r["trained_on"] == trained_on and r["task"] == task), None)


def claims(reports) -> dict:
  """Per task: does process-filtered SWiRL beat the base by more than the 95% intervals?

  'More than the interval' is read strictly: SWiRL's interval lies wholly above the base's.
  """
  out = {}
  for task in dict.fromkeys(r["task"] for r in reports):
    base, swirl = _find(reports, "base", "-", "-", task), _find(reports, "swirl", "process", task, task)
    if base and swirl:
      out[SHORT[task]] = {"base": base["accuracy"], "swirl_process": swirl["accuracy"],
                          "gain": swirl["accuracy"] - base["accuracy"],
                          "beats_base_beyond_95ci": swirl["accuracy_95ci"][0] > base["accuracy_95ci"][1]}
  return out


def summary_lines(results: dict, run_dir: str) -> list[str]:
  """What the run showed, per task, and where every output is."""
  reports, lines = results["reports"], ["", "=== summary ==="]
  ci = lambda r: f"{r['accuracy']:.3f} [{r['accuracy_95ci'][0]:.3f}, {r['accuracy_95ci'][1]:.3f}]"
  for task in dict.fromkeys(r["task"] for r in reports):
    base = _find(reports, "base", "-", "-", task)
    for strategy in dict.fromkeys(r["filter"] for r in reports if r["method"] == "swirl"):
      swirl = _find(reports, "swirl", strategy, task, task)
      if base is None or swirl is None:
        continue
      apart = swirl["accuracy_95ci"][0] > base["accuracy_95ci"][1]
      lines.append(f"{SHORT[task]}: held-out accuracy on {base['questions']} questions, base {ci(base)} -> "
                   f"SWiRL ({strategy} filter) {ci(swirl)}: the 95% intervals "
                   f"{'do not overlap' if apart else 'overlap'}")
      good = lambda r: "-" if r.get("good_step_share") is None else f"{r['good_step_share']:.3f}"
      lines.append(f"{SHORT[task]}: share of steps judged GOOD, base {good(base)} -> SWiRL {good(swirl)}")
  for task, s in results["stage1"].items():
    kept = s["filter_survival"]
    lines.append(f"{task}: Stage 1 wrote {kept.get('total')} trajectories; each filter kept: " +
                 ", ".join(f"{k} {v}" for k, v in kept.items() if k != "total"))
  lines.append(f"outputs under {run_dir}/: results.md (tables), results.png (plot), results.json, "
               "stage1/ (trajectories, judged), models/ (checkpoints, metrics), eval/ (trajectories, reports), "
               "log/ (library logs)")
  lines.append(f"wall time {results['seconds'] / 60:.1f} min")
  return lines


def results_table(results: dict) -> str:
  """Markdown: every model (accuracy, GOOD steps, mean steps), the paper's layouts, Stage 1, the claim."""
  reports = results["reports"]
  tasks_ = list(dict.fromkeys(r["task"] for r in reports))
  ci = lambda r: f"{r['accuracy']:.3f} [{r['accuracy_95ci'][0]:.3f}, {r['accuracy_95ci'][1]:.3f}]"
  good = lambda r: "-" if r.get("good_step_share") is None else f"{r['good_step_share']:.3f}"
  base = {r["task"]: r for r in reports if r["method"] == "base"}
  lines = ["### Every model on held-out questions (tool loop, greedy; 95% Wilson intervals)", "",
           "| model | trained on | filter | evaluated on | n | accuracy [95% CI] | vs base | GOOD steps | mean steps |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    gain = r["accuracy"] - base[r["task"]]["accuracy"] if r["method"] != "base" else 0.0
    lines.append(f"| {r['method']} | {SHORT.get(r['trained_on'], '-')} | {r['filter']} | {SHORT[r['task']]} | "
                 f"{r['questions']} | {ci(r)} | {gain:+.3f} | {good(r)} | {r['mean_steps']:.2f} |")
  # The paper's Table 2: in-domain and cross-task accuracy of process-filtered SWiRL.
  lines += ["", "### In-domain and cross-task (the layout of the paper's Table 2; process filter)", "",
            "| model | " + " | ".join(SHORT[t] for t in tasks_) + " |", "|---|" + "---|" * len(tasks_)]
  rows = [("base", "base", "-")] + [(f"SWiRL trained on {SHORT[t]}", "swirl", t) for t in tasks_]
  for label, method, trained in rows:
    cells = []
    for t in tasks_:
      r = _find(reports, method, "-" if method == "base" else "process", trained, t)
      cells.append(ci(r) if r else "-")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  # The paper's Figures 4-5: each filter, SWiRL against SFT on the same data.
  filters_ = list(dict.fromkeys(r["filter"] for r in reports if r["method"] != "base"))
  lines += ["", "### Filters: SWiRL against SFT on the same kept data (the paper's Figures 4-5)", "",
            "| trained and evaluated on | filter | SWiRL | SFT | GOOD steps SWiRL / SFT |", "|---|---|---|---|---|"]
  for t in tasks_:
    for f in filters_:
      rl, sft = _find(reports, "swirl", f, t, t), _find(reports, "sft", f, t, t)
      if rl or sft:
        lines.append(f"| {SHORT[t]} | {f} | {ci(rl) if rl else '-'} | {ci(sft) if sft else '-'} | "
                     f"{good(rl) if rl else '-'} / {good(sft) if sft else '-'} |")
  samples = results["config"]["samples_per_question"]
  lines += ["", f"### Stage 1 data ({samples} samples per training question, rule judge)", "",
            "| task | trajectories | GOOD steps | kept: none | process | outcome | process+outcome |",
            "|---|---|---|---|---|---|---|"]
  for task, s in results["stage1"].items():
    kept = s["filter_survival"]
    lines.append(f"| {task} | {kept.get('total')} | {s['good_step_share']} | {kept.get('none')} | "
                 f"{kept.get('process')} | {kept.get('outcome')} | {kept.get('process_and_outcome')} |")
  lines += ["", "### The claim", ""]
  for task, claim in results["claims"].items():
    lines.append(f"- {task}: base {claim['base']:.3f} -> SWiRL (process filter) {claim['swirl_process']:.3f} "
                 f"({claim['gain']:+.3f}); SWiRL's interval wholly above the base's: "
                 f"{claim['beats_base_beyond_95ci']}")
  lines.append(f"\nWall time of the run: {results['seconds'] / 60:.1f} min.")
  return "\n".join(lines) + "\n"


def results_chart(reports, path: str) -> None:
  """Accuracy with 95% intervals: one panel per evaluation task, bars per model."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = list(dict.fromkeys(r["task"] for r in reports))
  fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.2), squeeze=False)
  axes = axes[0]
  colour = {"base": "#8c8c8c", "sft": "#dd8452", "swirl": "#4c72b0"}
  for ax, task in zip(axes, panels):
    rows = [r for r in reports if r["task"] == task]
    labels = [r["name"].replace("swirl-", "SWiRL ").replace("sft-", "SFT ") for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["accuracy_95ci"][0] for a, r in zip(acc, rows)], [r["accuracy_95ci"][1] - a for a, r in zip(acc, rows)]]
    ax.bar(range(len(rows)), acc, yerr=err, capsize=3, color=[colour[r["method"]] for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (95% interval)")
    ax.set_title(f"evaluated on the {SHORT[task]} task")
  fig.tight_layout()
  with atomic_io.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  gin_flags.parse_gin()
  config = MiniatureConfig()
  runtime.log_to_directory(os.path.join(config.run_dir, "log"))  # the terminal keeps progress and warnings
  # Every trainer compiles the same few step shapes; the persistent cache compiles each once per run dir.
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(config.run_dir, "jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  Miniature(config, runtime.setup_runtime()).run()


if __name__ == "__main__":
  gin_flags.run(main)
