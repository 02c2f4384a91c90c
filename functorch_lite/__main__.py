"""`python -m functorch_lite`: the `functorch-lite` command."""

import sys

from ._cli import main

sys.exit(main())
