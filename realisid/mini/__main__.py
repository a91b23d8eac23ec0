"""`python -m realisid.mini ...`: train, export and measure the RealisID-Mini world's networks."""

import sys

from realisid.mini.cli import main

sys.exit(main())
