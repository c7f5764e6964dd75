"""Compatibility module: the architecture space now lives in :mod:`ghn.archs` (spec, sampling, counting, darts)."""
from ghn.archs.counting import *  # noqa: F401,F403
from ghn.archs.darts import *  # noqa: F401,F403
from ghn.archs.layers import LayerNorm2d, SqueezeExcite  # noqa: F401
from ghn.archs.sampling import *  # noqa: F401,F403
from ghn.archs.spec import *  # noqa: F401,F403
