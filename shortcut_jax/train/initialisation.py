"""How a run starts: `restore_or_init(exp, ckpt)`.

A run with checkpoints of its own resumes the latest intact one. A run without starts fresh, or
from another run's weights (`config.init`, `shortcut_jax.train.finetune`), or, for the distillation
objectives (`Objective.needs_teacher`), from its frozen teacher (`objectives.teacher`): the
teacher run is restored onto this run's mesh after its config is checked against this one,
the student starts from it (online and EMA weights; a fresh optimizer, as the original) and one
copy of the teacher's weights goes into the objective state. Everything is checked before
anything is compiled, and every state is placed with the config's sharding.
"""

from typing import Any, Optional, Tuple

import jax
from absl import logging

from shortcut_jax.train import finetune
from shortcut_jax import objectives
from shortcut_jax.parallel import sharding as sharding_lib
from shortcut_jax.checkpoints import manager
from shortcut_jax.checkpoints.manager import CheckpointManager, shape_mismatches
from shortcut_jax.core import layer_stack
from shortcut_jax.core.config_value import config_value
from shortcut_jax.experiment import (Experiment, holds_training_run, load_config, make_mesh,
                                     restore_experiment, sharded_abstract_state)
from shortcut_jax.objectives import teacher as teacher_lib
from shortcut_jax.objectives.teacher import TeacherError


def resolve_teacher(objective_config) -> Tuple[str, Optional[int]]:
  """(teacher workdir, step or None for the latest) from `teacher_workdir` / `teacher_step`;
  a path `<workdir>/checkpoints/<step>` names the workdir and the step at once."""
  path = config_value(objective_config, "teacher_workdir")
  if not path:
    raise TeacherError("objective.teacher_workdir is not set: "
                       + teacher_lib.train_teacher_hint("workdirs/digits_naive"))
  return manager.run_and_step(path, config_value(objective_config, "teacher_step"))


def restore_or_init(exp: Experiment, ckpt: CheckpointManager,
                    mesh: Optional[jax.sharding.Mesh] = None) -> Tuple[Any, int]:
  """The latest intact checkpoint in the workdir if any, else a fresh state. Returns (state, step).

  Either way the state is placed on `mesh` (default: the config's) with the config's sharding:
  a checkpoint written on any mesh is read straight into these shardings. Damaged newer
  checkpoints are skipped with a warning naming the step and file (and kept, renamed
  `<step>.damaged`); the returned step is the intact checkpoint's data position.

  Raises:
    DamagedCheckpointError: there are checkpoints but every one is damaged (nothing moved).
    CheckpointReadError: a step could not be read for another reason than damage (I/O,
      permissions, memory, an Orbax version); every process raises it, nothing is moved.
    CheckpointMismatchError: the checkpoint's arrays do not fit the config's state.
  """
  mesh = make_mesh(exp.config) if mesh is None else mesh
  abstract, shardings = sharded_abstract_state(exp, mesh)
  init_workdir = exp.config.init.workdir
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore_latest_intact(abstract)
    logging.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    if init_workdir:
      logging.warning("init.workdir=%s ignored: this run resumes its own checkpoint",
                      init_workdir)
    return state, int(meta.get("data_position", meta["step"]))
  init = lambda: jax.jit(exp.init_state, out_shardings=shardings)(
      jax.random.PRNGKey(exp.config.seed))
  if init_workdir:
    return start_from_run(exp, init, abstract, shardings, mesh), 0
  if exp.objective.needs_teacher:
    return start_from_teacher(exp, init, abstract, shardings, mesh), 0
  return init(), 0


def start_from_run(exp: Experiment, init_fn, abstract, shardings, mesh):
  """A fresh state whose online and EMA weights come from another run (`config.init`,
  `shortcut_jax.train.finetune`), restored onto `mesh` and placed like this run's parameters."""
  config = exp.config
  if exp.objective.needs_teacher:
    raise finetune.InitError(
        f"init.workdir is set, but objective {exp.objective.name!r} starts from its teacher "
        f"(objective.teacher_workdir): unset init.workdir")
  workdir, step = finetune.resolve(config.init)
  if not holds_training_run(workdir):
    raise finetune.no_source(workdir)
  source_config = load_config(workdir)
  problems = finetune.mismatches(config, source_config)
  if problems:
    raise finetune.InitError(f"init.workdir: the run in {workdir} is another network or data "
                             f"than this one:\n  " + "\n  ".join(problems))
  source_exp, source, source_step = restore_experiment(workdir, config=source_config, step=step,
                                                        mesh=mesh)
  weights = finetune.source_weights(
      source, config.init, source_uses_level=source_exp.objective.uses_level,
      uses_level=exp.objective.uses_level, hidden_size=source_config.model.hidden_size,
      dtype=jax.numpy.dtype(source_config.model.dtype))
  weights = layer_stack.convert(weights, config.model.scan_layers)  # Either layer layout.
  # Checked on the shapes, before the initialisation compiles.
  problems = shape_mismatches(abstract.params, finetune.added_inputs(weights, abstract.params))
  if problems:
    raise finetune.InitError(f"init.workdir: the parameters of {workdir} (step {source_step}) "
                             f"do not fit this run's:\n  " + "\n  ".join(problems[:20]))
  state = init_fn()
  weights = finetune.added_inputs(weights, state.params)
  params = sharding_lib.placed_copy(weights, shardings.params)
  # The objective's state starts fresh from the new weights (e.g. a twin-EMA teacher).
  objective_state = jax.jit(lambda p: exp.objective.init_state(p, config.objective),
                            out_shardings=shardings.objective_state)(params)
  state = state.replace(params=params,
                        ema_params=sharding_lib.placed_copy(weights, shardings.ema_params),
                        objective_state=objective_state)
  logging.info("weights from %s at step %d (%s, objective %r), fresh optimizer, step 0",
               workdir, source_step, config.init.weights, source_config.objective.name)
  return state


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
  workdir, step = resolve_teacher(config.objective)
  name = student_objective.name
  if not holds_training_run(workdir):
    raise TeacherError(f"objective {name!r} needs a trained teacher, and {workdir} holds no "
                       f"training run (config.json and checkpoints/): "
                       + teacher_lib.train_teacher_hint(workdir))
  teacher_config = load_config(workdir)
  try:
    teacher_objective = objectives.get_objective(teacher_config.objective.name)
  except ValueError:
    teacher_objective = None
  problems = (finetune.mismatches(config, teacher_config, names=("teacher", "student"))
              + teacher_lib.objective_mismatches(config, teacher_config, student_objective,
                                                 teacher_objective))
  if problems:
    raise TeacherError(f"the teacher in {workdir} does not fit objective {name!r}'s student:\n  "
                       + "\n  ".join(problems) + "\n" + teacher_lib.train_teacher_hint(workdir))
  if teacher_config.data.name != config.data.name:
    logging.warning("the teacher in %s was trained on %r, the student trains on %r", workdir,
                    teacher_config.data.name, config.data.name)
  try:
    _, state, teacher_step = restore_experiment(workdir, config=teacher_config, step=step,
                                                mesh=mesh)
  except FileNotFoundError as e:
    raise TeacherError(f"no teacher checkpoint in {workdir}: {e}; "
                       + teacher_lib.train_teacher_hint(workdir)) from None
  scanned = config.model.scan_layers  # The teacher may have the other layer layout.
  state = state.replace(params=layer_stack.convert(state.params, scanned),
                        ema_params=layer_stack.convert(state.ema_params, scanned))
  problems = shape_mismatches(abstract_params, state.params)
  if problems:
    raise TeacherError(f"the teacher in {workdir} (step {teacher_step}) has other parameters "
                       f"than the student:\n  " + "\n  ".join(problems[:20]))
  return state, teacher_step, workdir


def start_from_teacher(exp: Experiment, init_fn, abstract, shardings, mesh):
  """A distillation student's first state: its teacher's weights, and a copy of the weights the
  teacher's calls use in the objective state (`teacher_lib.teacher_weights`)."""
  objective = exp.objective
  teacher, teacher_step, workdir = load_teacher(exp.config, objective, abstract.params, mesh)
  state = init_fn()
  objective_state = dict(state.objective_state)
  objective_state[teacher_lib.TEACHER] = sharding_lib.placed_copy(
      teacher_lib.teacher_weights(teacher.params, teacher.ema_params, exp.config.objective,
                                  objective.name),
      shardings.objective_state[teacher_lib.TEACHER])
  logging.info("objective %s: teacher and student start from %s at step %d", objective.name,
               workdir, teacher_step)
  return state.replace(params=sharding_lib.placed_copy(teacher.params, shardings.params),
                       ema_params=sharding_lib.placed_copy(teacher.ema_params,
                                                           shardings.ema_params),
                       objective_state=objective_state)
