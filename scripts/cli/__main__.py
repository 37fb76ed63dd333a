"""``python -m scripts.cli``: the same as the ``kidney-seg`` console command."""

import sys

from .main import main

sys.exit(main())
