"""The frozen teacher of the distillation baselines (`progressive`, `consistency-distillation`).

Where it comes from. `config.objective.teacher_workdir` names the training workdir of a finished
run (its `config.json` and `checkpoints/`), or one of its checkpoint folders
`<workdir>/checkpoints/<step>`, local or remote (gs://...: read through `shortcut_jax.storage`
and the checkpoint manager, by the training layer: `initialisation.resolve_teacher`);
`objective.teacher_step` picks a step (-1: the latest). The
teacher has to be a run of the same network on the same data whose network does not take the
step size (a flow-matching `naive` run, or an earlier distillation run): anything else is an
error naming the field that differs, raised before anything is compiled, with the command that
trains a teacher.

How it is used. When a run of an objective that `needs_teacher` starts without a checkpoint, the
training layer (`initialisation.start_from_teacher`) checks the teacher run's config against the
student's (`objective_mismatches`, `finetune.mismatches`), restores its state, starts the student from it
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

import jax
import jax.numpy as jnp

from shortcut_jax import errors
from shortcut_jax.core.config_value import config_value

TEACHER = "teacher"
# Bound on the teacher's intermediate state and the shortcut model's target, as in the original.
TEACHER_CLIP = 4.0


def euler_advance(x, out, h):
  """x + h out: a first-order step of h ([n, 1, ...]) with the teacher's output."""
  return x + h * out.astype(x.dtype)


def two_half_steps(teacher_fn, x_t, t, level, advance=euler_advance):
  """The teacher's two half steps of d/2 = 2^-level / 2 from (x_t, t) at level + 1: the
  self-consistency target of every shortcut-style objective (the shortcut model, HOMO,
  progressive distillation), written once.

  Args:
    teacher_fn: `(x, t, level) -> output` of the teacher (no gradient flows through it).
    x_t: [n, ...] states; t: float32 [n]; level: int32 [n] (the student's level).
    advance: `(x, output, h) -> x'`, a step of h ([n, 1, ...]) with an output (first order by
      default; HOMO's is second order). The midpoint is clipped to +-TEACHER_CLIP.

  Returns:
    (output at (x_t, t), output at the midpoint (x_mid, t + d/2)).
  """
  half = (1 / (2 ** level.astype(jnp.float32))) / 2  # The original's arithmetic.
  call = lambda x, tt: jax.lax.stop_gradient(teacher_fn(x, tt, level + 1))
  out_a = call(x_t, t)
  x_mid = jnp.clip(advance(x_t, out_a, half.reshape((-1,) + (1,) * (x_t.ndim - 1))),
                   -TEACHER_CLIP, TEACHER_CLIP)
  return out_a, call(x_mid, t + half)


class TeacherError(errors.UserError, ValueError):
  """The teacher is missing or does not fit the student."""


def train_teacher_hint(workdir: str) -> str:
  return (f"train a flow-matching teacher of the same model and data first, e.g. for the digits "
          f"`python train.py --config=configs/digits_naive.py --workdir={workdir}` (with "
          f"`configs/digits_naive.py:smoke` for a `:smoke` student), or point "
          f"objective.teacher_workdir at an existing run")


def objective_mismatches(student, teacher, student_objective, teacher_objective) -> list:
  """What makes a teacher run of the same network and data (`finetune.mismatches`) unfit for a
  student: another interpolation path, an unknown objective (`teacher_objective` None), or a
  network that takes the step size where the student's teacher must not, or the other way."""
  problems = []
  if student.objective.path != teacher.objective.get("path", "linear"):
    problems.append(f"objective.path: teacher {teacher.objective.get('path')!r}, student "
                    f"{student.objective.path!r}")
  if teacher_objective is None:
    problems.append(f"objective.name: the teacher's {teacher.objective.name!r} is unknown")
  elif teacher_objective.uses_level != student_objective.uses_level:
    problems.append(
        f"objective.name: the teacher is a {teacher.objective.name!r} run, whose network "
        f"{'takes' if teacher_objective.uses_level else 'ignores'} the step size; "
        f"{student_objective.name!r} needs one that "
        f"{'takes' if student_objective.uses_level else 'ignores'} it (e.g. 'naive')")
  return problems


# Objectives whose original calls the teacher's EMA weights whatever `bootstrap_ema` says: its
# consistency distillation calls `train_state_teacher.call_model_ema` (`faithful=True` keeps it).
_EMA_TEACHER_WHEN_FAITHFUL = ("consistency-distillation",)


def teacher_weights(state_params, state_ema, objective_config, objective_name=None):
  """The weights the teacher's calls use: EMA when `bootstrap_ema` (the original), else online;
  always EMA for a faithful `consistency-distillation` (`objective_name`), as the original."""
  if (objective_name in _EMA_TEACHER_WHEN_FAITHFUL
      and config_value(objective_config, "faithful")):
    return state_ema
  return state_ema if config_value(objective_config, "bootstrap_ema") else state_params


def init_teacher_state(params, config=None) -> dict:
  """The teacher slot of the objective state: a copy of the (fresh) parameters, replaced by the
  loaded teacher when the run starts (`initialisation.start_from_teacher`)."""
  del config
  return {TEACHER: jax.tree.map(jnp.array, params)}
