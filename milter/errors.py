"""The one base of every error that is meant to be read by a person as one line.

The command line prints these without a traceback and exits 1; each layer raises its
own subclass (a setup error, a failed release, a command's error) without the layers
having to know each other.
"""

from __future__ import annotations


class UserError(Exception):
    """An operation failed for a reason its user can act on; ``str()`` says which."""
