"""`python -m fedbus.node` runs one edge node (tests start it this way to kill it)."""

import sys

from fedbus.node.cli import main

sys.exit(main())
