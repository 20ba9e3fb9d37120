"""`select`: wait on several channel operations and perform exactly one, as Go's select does.

It lives in `qchan.chan`, beside the channels whose waiters it shares; this module
keeps the import path.
"""

from .chan import Selected, select

__all__ = ["Selected", "select"]
