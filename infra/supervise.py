"""`python -m infra.supervise CONFIG`: the supervisor's process (infra/supervisor.py) over
the stack whose configuration `up` wrote. The one module that joins the two: the stack
starts the supervisor as a component, and the supervisor acts on the stack."""

import argparse
import sys
from pathlib import Path

from infra import supervisor
from infra.config import StackConfig
from infra.stack import Stack
from runtime.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.supervise")
    parser.add_argument("config", type=Path, help="the stack's configuration (JSON)")
    args = parser.parse_args(argv)
    configure_logging("INFO", supervisor.NAME)
    config = StackConfig.model_validate_json(args.config.read_text())
    supervisor.run(config, lambda: Stack(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
