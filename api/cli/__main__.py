"""``python -m spanprism.api.cli``: the same entry point as the ``spanprism`` script."""

import sys

from spanprism.api.cli import main

sys.exit(main())
