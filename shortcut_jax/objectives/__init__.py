"""Training objectives: a registry of objectives with one interface (see `base`), and the
interpolation paths they train on (`paths`)."""

from shortcut_jax.objectives.base import (Objective, TrainingTargets, as_objective, euler_step,
                                          field_checks, get_objective, mse_loss, objective_names,
                                          register_field_checks, register_objective)
from shortcut_jax.core.paths import Path, get_path
# Importing the modules registers their objectives.
from shortcut_jax.objectives import alphaflow  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import homo  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import imf  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import consistency  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import livereflow  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import meanflow  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import naive  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import progressive  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import regression  # noqa: F401  pylint: disable=unused-import
from shortcut_jax.objectives import shortcut  # noqa: F401  pylint: disable=unused-import
