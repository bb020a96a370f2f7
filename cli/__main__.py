"""`python -m cli`: the `telemetry` command."""

import sys

from cli.main import main

sys.exit(main())
