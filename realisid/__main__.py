"""`python -m realisid run <workflow> ...`: the headless runner."""

import argparse
import logging
import sys

from realisid.host import runner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realisid", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    runner.add_arguments(commands.add_parser("run", help="execute a workflow headlessly in the ComfyUI host"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return runner.main(args)


if __name__ == "__main__":
    sys.exit(main())
