"""`python -m functorch_lite._cli`: the `functorch-lite` command (as `python -m functorch_lite`)."""

import sys

from . import main

sys.exit(main())
