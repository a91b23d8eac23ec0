"""`python -m realisid.train prepare|fit ...`"""

import sys

from realisid.train.cli import main

sys.exit(main())
