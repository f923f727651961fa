"""`python -m bincounter.cli` (the same as `python -m bincounter`)."""

import sys

from . import main

sys.exit(main())
