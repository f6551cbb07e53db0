"""Moved to xdpguard.core.model.forwarding (issue 26). A shim for one stop: this name is the same module
object, so old imports (and monkeypatches) keep working. Import the new path in new code."""

import sys

from .model import forwarding as _moved

sys.modules[__name__] = _moved
