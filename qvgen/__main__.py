"""``python -m qvgen``: the command line of :mod:`qvgen.cli`."""

import sys

from qvgen.cli import main

sys.exit(main())
