"""Thin clients: the ``chatter`` CLI and the client library it is built on."""
