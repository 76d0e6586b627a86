"""shortcut_jax: one-step and few-step generative models (shortcut models, flow matching) in JAX/Flax."""

__version__ = "0.1.0"
