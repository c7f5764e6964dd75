"""Compatibility module and ``python -m ghn.data`` entry point: architecture splits now live in
:mod:`ghn.archs.storage` (files, loading) and :mod:`ghn.archs.generate` (generation, checking, CLI)."""
import sys

from ghn.archs.generate import *  # noqa: F401,F403
from ghn.archs.generate import main
from ghn.archs.storage import *  # noqa: F401,F403
from ghn.archs.storage import _scan_members  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
