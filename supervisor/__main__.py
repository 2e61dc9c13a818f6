"""``python -m supervisor``: the same as the ``supervise`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
