"""The resilience gate; its code lives in ``shared.gate`` (this module keeps the old imports working)."""

from shared.gate import *  # noqa: F403
from shared.gate import __all__  # noqa: F401
