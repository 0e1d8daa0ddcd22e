"""Trainer checkpoints: params, optimizer state and a JSON record (step, data position, fingerprint).

The layout is orbax's: `{dir}/{step}/params`, `opt_state`, `meta`. `load_policy(checkpoint_dir=...)`
and `swirl_jax --mode=evaluate` read the params of one; `TrainCheckpoints` is how the trainer
writes and resumes them.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from swirl_jax import provenance
from swirl_jax.models.transformer import Transformer


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class TrainCheckpoints:
  """The checkpoints of one training run (the newest `keep` are kept)."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory
    self.manager = ocp.CheckpointManager(os.path.abspath(directory),
                                         options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, meta: dict) -> None:
    """Collective: every process calls it with the same step."""
    self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                    opt_state=ocp.args.StandardSave(opt_state),
                                                    meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, step: int, params_like, opt_state_like) -> tuple:
    """(params, opt_state, meta) of `step`, laid out (shapes, dtypes, shardings) like the given trees."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)), meta=ocp.args.JsonRestore()))
    return restored["params"], restored["opt_state"], restored["meta"]


def latest_step(checkpoint_dir: str) -> int:
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"{checkpoint_dir}: no such checkpoint directory")
  step = ocp.CheckpointManager(os.path.abspath(checkpoint_dir)).latest_step()
  if step is None:
    raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint")
  return step


def load_trained_params(model: Transformer, checkpoint_dir: str, step: int | None = None) -> int:
  """Puts the params of a trainer checkpoint (the latest by default) into `model`; returns the step."""
  step = latest_step(checkpoint_dir) if step is None else step
  restored = ocp.CheckpointManager(os.path.abspath(checkpoint_dir)).restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(
      _abstract(nnx.state(model)))))
  nnx.update(model, restored["params"])
  return step


def checkpoint_identity(checkpoint_dir: str, step: int) -> dict:
  """Which trained params a checkpoint holds: its step and a digest of its training fingerprint
  (the same wherever the directory lies)."""
  meta = ocp.CheckpointManager(os.path.abspath(checkpoint_dir)).restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return {"step": int(step), "training": provenance.digest(meta.get("fingerprint"))}


def training_question_digests(checkpoint_dir: str, step: int | None = None) -> list[str] | None:
  """The digests of the questions a checkpoint's params were trained on (None: not recorded, as
  for a user's own SeqIO task)."""
  step = latest_step(checkpoint_dir) if step is None else step
  meta = ocp.CheckpointManager(os.path.abspath(checkpoint_dir)).restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return meta.get("training_question_digests")
