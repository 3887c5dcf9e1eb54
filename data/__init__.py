"""Dataset preparation commands (`python -m data.<step>`); the code is `maestro_jax.data`."""
