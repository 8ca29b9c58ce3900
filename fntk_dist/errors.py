"""The one base class of errors a user can fix: a bad config, data file, argument or cluster.

The `fntk` command catches UserError alone and prints its one-line message (exit 2); anything
else is a bug and shows its traceback. UserError is a ValueError, so Python callers that catch
ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used; str() is one line naming the key, file or argument."""


class ConfigError(UserError):
    """A config that cannot be used; str() is one line naming the key."""
