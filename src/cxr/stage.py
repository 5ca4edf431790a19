"""How every stage script under src/ ends, and what its exit code means.

    ERRORS = (ConfigError, CacheError)         # the errors whose messages say what to do
    if __name__ == "__main__":
        run_stage("train", main, ERRORS)

Exit codes: 0 the stage finished; 1 a problem the user can act on, printed as one line
``<stage>: error: <what was found, what was expected, the fix>`` without a traceback (a full
disk too, whichever stage meets it). Anything
else (a traceback) is a bug.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import NoReturn


def run_stage(name: str, main: Callable[[], int], errors: tuple[type[BaseException], ...]) -> NoReturn:
    """Run a stage's ``main`` and exit with its code; ``errors`` end it with exit code 1 and their message."""
    try:
        code = main()
    except errors as exc:
        sys.exit(f"{name}: error: {exc}")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        sys.exit(
            f"{name}: error: no space left on the device{where} ({exc.strerror}). "
            f"Free some space (`df -h` shows where), then run the stage again"
        )
    sys.exit(code)
