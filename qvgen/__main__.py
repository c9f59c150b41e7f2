"""``python -m qvgen``: the command line of :mod:`qvgen.apps.cli`."""

import sys

from qvgen.apps.cli import main

sys.exit(main())
