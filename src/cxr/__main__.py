"""``python -m cxr predict IMAGES... [--model DIR]``: the same as the ``cxr`` console script."""

import sys

from cxr.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
