"""Compatibility module: the built-in models now live in :mod:`ghn.archs` (cnns, transformers, registry)."""
from ghn.archs.cnns import *  # noqa: F401,F403
from ghn.archs.layers import SqueezeExcite, make_norm  # noqa: F401
from ghn.archs.registry import ALIASES, PREDEFINED, build_predefined, list_models, register_model, resolve_name  # noqa: F401
from ghn.archs.transformers import *  # noqa: F401,F403
