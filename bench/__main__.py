"""``python -m bench [--quick|--full] [--only a,b] [--servers a,b]``."""

import sys

from .runner import run

if __name__ == "__main__":
    run(sys.argv[1:])
    sys.exit(0)
