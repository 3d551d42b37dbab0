"""``python -m fastsac``: the same as the ``fastsac`` command."""

import sys

from fastsac.cli import main

sys.exit(main())
