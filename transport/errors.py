"""The error of the transport: a run directory, an endpoint or a key that cannot be used."""
from __future__ import annotations


class SetupError(Exception):
    """A run directory or endpoint that cannot be used; the sentence names the setting and the fix."""
