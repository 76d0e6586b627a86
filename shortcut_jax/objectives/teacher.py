"""The frozen teacher of the distillation baselines (`progressive`, `consistency-distillation`).

Where it comes from. `config.objective.teacher_workdir` names the training workdir of a finished
run (its `config.json` and `checkpoints/`), or one of its checkpoint folders
`<workdir>/checkpoints/<step>`, local or remote (gs://...: read through `shortcut_jax.storage`
and the checkpoint manager); `objective.teacher_step` picks a step (-1: the latest). The
teacher has to be a run of the same network on the same data whose network does not take the
step size (a flow-matching `naive` run, or an earlier distillation run): anything else is an
error naming the field that differs, raised before anything is compiled, with the command that
trains a teacher.

How it is used. `start_from_teacher` is the objectives' `start_state` (`objectives.base`): when a
run starts without a checkpoint, it restores the teacher run's state, starts the student from it
(online and EMA weights: the original loads the teacher's checkpoint into the student too; the
optimizer state is fresh, as the original deletes it) and stores one copy of the teacher's
weights in `TrainState.objective_state['teacher']`: its EMA weights when `bootstrap_ema` (the
original's `call_model_ema`), else its online weights.

Why in the objective state. The teacher is then part of the train state: a pure input of the
train step (never a parameter: no gradient or optimizer update reaches it), sharded like the
parameters (`sharding.state_partition_specs` gives objective-state leaves that mirror a
parameter the parameter's placement), checkpointed, and restored on resume. Progressive
distillation needs this anyway (its teacher becomes the student at every phase and cannot be
recomputed); for consistency distillation it costs one parameter copy per checkpoint (a fifth
more than params + EMA + Adam's two moments) and buys a resume and an `eval.py` that never
read the teacher's workdir again (which may have moved or trained on).
"""

import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from absl import logging

from shortcut_jax import errors
from shortcut_jax import sharding
from shortcut_jax import storage
from shortcut_jax.config_value import config_value

TEACHER = "teacher"

# Fields that must agree between the teacher's config and the student's.
_MODEL_FIELDS = ("name", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
                 "prediction", "cond_image_mode")
_DATA_FIELDS = ("image_size", "num_classes", "low_res_factor", "latents")


class TeacherError(errors.UserError, ValueError):
  """The teacher is missing or does not fit the student."""


def train_teacher_hint(workdir: str) -> str:
  return (f"train a flow-matching teacher of the same model and data first, e.g. for the digits "
          f"`python train.py --config=configs/digits_naive.py --workdir={workdir}` (with "
          f"`configs/digits_naive.py:smoke` for a `:smoke` student), or point "
          f"objective.teacher_workdir at an existing run")


def resolve_teacher(objective_config) -> Tuple[str, Optional[int]]:
  """(teacher workdir, step or None for the latest) from `teacher_workdir` / `teacher_step`;
  a path `<workdir>/checkpoints/<step>` names the workdir and the step at once."""
  path = config_value(objective_config, "teacher_workdir", None)
  if not path:
    raise TeacherError("objective.teacher_workdir is not set: "
                       + train_teacher_hint("workdirs/digits_naive"))
  path = storage.absolute(os.path.expanduser(str(path))).rstrip(os.sep)  # A URI stays one.
  step = int(config_value(objective_config, "teacher_step", -1))
  head, tail = os.path.split(path)
  if tail.isdigit() and os.path.basename(head) == "checkpoints":
    path, step = os.path.dirname(head), int(tail)
  return path, (None if step < 0 else step)


def _mismatches(student, teacher, student_objective) -> list:
  from shortcut_jax import objectives  # pylint: disable=g-import-not-at-top
  problems = []
  for field in _MODEL_FIELDS:
    a, b = student.model.get(field), teacher.model.get(field)
    if a != b:
      problems.append(f"model.{field}: teacher {b!r}, student {a!r}")
  for field in _DATA_FIELDS:
    a, b = student.data.get(field), teacher.data.get(field)
    if a != b:
      problems.append(f"data.{field}: teacher {b!r}, student {a!r}")
  if student.objective.path != teacher.objective.get("path", "linear"):
    problems.append(f"objective.path: teacher {teacher.objective.get('path')!r}, student "
                    f"{student.objective.path!r}")
  try:
    teacher_objective = objectives.get_objective(teacher.objective.name)
  except ValueError:
    problems.append(f"objective.name: the teacher's {teacher.objective.name!r} is unknown")
  else:
    if teacher_objective.uses_level != student_objective.uses_level:
      problems.append(
          f"objective.name: the teacher is a {teacher.objective.name!r} run, whose network "
          f"{'takes' if teacher_objective.uses_level else 'ignores'} the step size; "
          f"{student_objective.name!r} needs one that "
          f"{'takes' if student_objective.uses_level else 'ignores'} it (e.g. 'naive')")
  return problems


def load_teacher(config, student_objective, abstract_params, mesh):
  """Restores the teacher run's state onto `mesh` after checking it fits the student.

  Args:
    config: the student's experiment config.
    student_objective: the student's `Objective`.
    abstract_params: the student's parameter shapes (checked leaf by leaf).
    mesh: where to restore (the student's mesh).

  Returns:
    (teacher TrainState, its step, its workdir).

  Raises:
    TeacherError: no teacher there, or one of another model, data or kind of network.
  """
  from shortcut_jax import trainer  # pylint: disable=g-import-not-at-top  (trainer imports us)
  from shortcut_jax.checkpoints import manager  # pylint: disable=g-import-not-at-top
  workdir, step = resolve_teacher(config.objective)
  name = student_objective.name
  if not storage.exists(storage.join(workdir, "config.json")) or not storage.isdir(
      storage.join(workdir, "checkpoints")):
    raise TeacherError(f"objective {name!r} needs a trained teacher, and {workdir} holds no "
                       f"training run (config.json and checkpoints/): "
                       + train_teacher_hint(workdir))
  teacher_config = trainer.load_config(workdir)
  problems = _mismatches(config, teacher_config, student_objective)
  if problems:
    raise TeacherError(f"the teacher in {workdir} does not fit objective {name!r}'s student:\n  "
                       + "\n  ".join(problems) + "\n" + train_teacher_hint(workdir))
  if teacher_config.data.name != config.data.name:
    logging.warning("the teacher in %s was trained on %r, the student trains on %r", workdir,
                    teacher_config.data.name, config.data.name)
  try:
    _, state, teacher_step = trainer.restore_experiment(workdir, config=teacher_config,
                                                        step=step, mesh=mesh)
  except FileNotFoundError as e:
    raise TeacherError(f"no teacher checkpoint in {workdir}: {e}; "
                       + train_teacher_hint(workdir)) from None
  problems = manager.shape_mismatches(abstract_params, state.params)
  if problems:
    raise TeacherError(f"the teacher in {workdir} (step {teacher_step}) has other parameters "
                       f"than the student:\n  " + "\n  ".join(problems[:20]))
  return state, teacher_step, workdir


# Objectives whose original calls the teacher's EMA weights whatever `bootstrap_ema` says: its
# consistency distillation calls `train_state_teacher.call_model_ema` (`faithful=True` keeps it).
_EMA_TEACHER_WHEN_FAITHFUL = ("consistency-distillation",)


def teacher_weights(state_params, state_ema, objective_config, objective_name=None):
  """The weights the teacher's calls use: EMA when `bootstrap_ema` (the original), else online;
  always EMA for a faithful `consistency-distillation` (`objective_name`), as the original."""
  if (objective_name in _EMA_TEACHER_WHEN_FAITHFUL
      and config_value(objective_config, "faithful", False)):
    return state_ema
  return state_ema if config_value(objective_config, "bootstrap_ema", True) else state_params


def start_from_teacher(init_fn, *, config, abstract_state, shardings, mesh):
  """`start_state` of the distillation objectives (see the module docstring)."""
  from shortcut_jax import objectives  # pylint: disable=g-import-not-at-top
  objective = objectives.get_objective(config.objective.name)
  teacher, teacher_step, workdir = load_teacher(config, objective, abstract_state.params, mesh)
  state = init_fn()
  objective_state = dict(state.objective_state)
  objective_state[TEACHER] = sharding.placed_copy(
      teacher_weights(teacher.params, teacher.ema_params, config.objective, objective.name),
      shardings.objective_state[TEACHER])
  logging.info("objective %s: teacher and student start from %s at step %d", objective.name,
               workdir, teacher_step)
  return state.replace(params=sharding.placed_copy(teacher.params, shardings.params),
                       ema_params=sharding.placed_copy(teacher.ema_params, shardings.ema_params),
                       objective_state=objective_state)


def init_teacher_state(params, config=None) -> dict:
  """The teacher slot of the objective state: a copy of the (fresh) parameters, replaced by the
  loaded teacher when the run starts (`start_from_teacher`)."""
  del config
  return {TEACHER: jax.tree.map(jnp.array, params)}
