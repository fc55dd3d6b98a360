"""The stores' names under this module's earlier name, for scripts written against it; the
stores live in scalselect.stores."""

from .stores import *  # noqa: F401,F403
from .stores import __all__  # noqa: F401
