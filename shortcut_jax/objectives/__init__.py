"""Training objectives: a registry of target functions with one signature (see `base`)."""

from shortcut_jax.objectives.base import (Objective, TrainingTargets, get_objective,
                                          objective_names, register_objective)
# Importing the modules registers their objectives.
from shortcut_jax.objectives import naive  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import regression  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import shortcut  # noqa: F401  pylint: disable=unused-import
