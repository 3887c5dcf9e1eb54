"""`python -m data.prepare` from a checkout: the same command as `python -m maestro_jax.data.prepare`."""

import sys

from maestro_jax.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
