"""``python -m shared.simulator``: the simulator as its own process (see ``shared.simulator.cli``)."""

import sys

from shared.simulator.cli import main

sys.exit(main())
