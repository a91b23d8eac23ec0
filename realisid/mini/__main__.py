"""`python -m realisid.mini ...`: train, export and measure the RealisID-Mini world's networks."""

import sys

from realisid.mini.cli import main

if __name__ == "__main__":  # spawned worker processes (`paper --workers`) import this module again
    sys.exit(main())
