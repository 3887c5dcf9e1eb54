"""`python -m data.cache_latents` from a checkout: the same command as
`python -m maestro_jax.data.latent_cache`."""

import sys

from maestro_jax.data.latent_cache import main

if __name__ == "__main__":
    sys.exit(main())
