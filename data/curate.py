"""`python -m data.curate` from a checkout: the same command as `python -m maestro_jax.data.curate`."""

import sys

from maestro_jax.data.curate import main

if __name__ == "__main__":
    sys.exit(main())
