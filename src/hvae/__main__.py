"""``python -m hvae`` is the ``hvae`` command."""

import sys

from .cli import main

sys.exit(main())
