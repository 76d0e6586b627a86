"""Configs: the schema, the `:smoke` shrink, config files, and validation.

  schema      every field and its only default: `shortcut_jax.core.schema.base_config`
              (re-exported here; experiment files in `configs/` start from it).
  smoke       `apply_smoke`: any config shrunk to run a few steps in seconds on a CPU.
  files       `finalize` (the `get_config(arg)` argument) and `load_sibling_config`.
  validation  `validate(config)`: every value checked before anything is compiled, errors naming
              the field (`objective.bootstrap_every`, ...); it composes the checks each part
              owns (the objectives' in their modules, the datasets' in `data.catalog`).
"""

from shortcut_jax.config.files import finalize, load_sibling_config  # noqa: F401
from shortcut_jax.config.smoke import MANUAL_DATASETS, apply_smoke  # noqa: F401
from shortcut_jax.config.validation import (  # noqa: F401
    ACCELERATIONS, DATASETS, DTYPES, EVAL_ERRORS, EXTRA_FID_METRICS, LOW_RES_FACTORS,
    PREDICTIONS, eval_period, validate)
from shortcut_jax.core.schema import base_config  # noqa: F401
