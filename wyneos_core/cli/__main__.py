"""``python -m wyneos_core.cli``: the ``wyneos`` command."""

import sys

from wyneos_core.cli.program import main

sys.exit(main())
