"""Multi-process tests: the workers and the spawner are imported by module name in the child processes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
