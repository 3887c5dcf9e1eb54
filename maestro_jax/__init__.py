"""maestro_jax: Maestro (multi-source audio-to-video diffusion) in JAX/Flax."""

__version__ = "0.1.0"
