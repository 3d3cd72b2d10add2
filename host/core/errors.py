"""The error types every layer may raise.

Library code raises these; only the command line (`edgewatch.cli`) turns a
:class:`UserError` into the one-line message ``edgewatch <cmd>: <message>`` and
exit status 2, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2."""
