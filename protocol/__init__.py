"""Chatter's wire protocol: every message type, the frame codec, and the socket settings."""
