"""`python -m fedbus.aggregator` runs the daemon (the demo starts it this way)."""

import sys

from fedbus.aggregator.cli import main

sys.exit(main())
