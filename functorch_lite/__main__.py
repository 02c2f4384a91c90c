"""`python -m functorch_lite`: the `functorch-lite` command."""

import sys

from .cli import main

sys.exit(main())
