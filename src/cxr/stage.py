"""What every stage script under src/ shares: how it ends.

    if __name__ == "__main__":
        run_stage("train", main, (ConfigError, CacheError))
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


def run_stage(name: str, main: Callable[[], int], errors: tuple[type[BaseException], ...]) -> NoReturn:
    """Run a stage's ``main`` and exit with its code. The expected ``errors``, whose messages say
    what to do, end it as ``name: message`` with exit code 1 and no traceback."""
    try:
        code = main()
    except errors as exc:
        sys.exit(f"{name}: {exc}")
    sys.exit(code)
