"""``python -m tfcompress``: the same command as the ``tfcompress`` console script."""

import sys

from tfcompress.cli import main

if __name__ == "__main__":
    sys.exit(main())
