"""Where presso keeps what it can rebuild: the examples' trained weights, teachers' outputs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PRESSO_CACHE_DIR"


def cache_root() -> Path:
    """``$PRESSO_CACHE_DIR``, else the user's cache folder for presso (not created here)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs  # only needed when no override is given

        root = platformdirs.user_cache_dir("presso")
    return Path(root)
