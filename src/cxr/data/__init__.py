"""Data: sources, synthetic generator, manifest and splits, decoded-image cache, augmentation.

What every walk over a folder of images skips: operating-system and tool litter that real copies
of the archive carry (``__MACOSX/``, ``.DS_Store``, AppleDouble ``._*`` files, ...).
"""

JUNK_DIRS = frozenset({"__macosx", ".ipynb_checkpoints", ".git", ".dvc"})  # compared lower-cased
JUNK_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".directory"})


def is_junk(name: str) -> bool:
    """Operating-system litter (never images): a file or folder name from JUNK_DIRS / JUNK_FILES, or ``._*``."""
    low = name.lower()
    return low in JUNK_FILES or low in JUNK_DIRS or name.startswith("._")
