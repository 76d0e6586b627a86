"""Networks: the DiT, the VelocityModel calling convention, and (for FID) InceptionV3."""

from shortcut_jax.models.dit import DIT_PRESETS, DiT, velocity_model
from shortcut_jax.models.velocity_model import VelocityModel, cond_from_batch
