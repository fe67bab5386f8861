"""``python -m medens``: the ``medens`` command (see :mod:`medens.cli`)."""

import sys

from medens.cli import main

sys.exit(main())
