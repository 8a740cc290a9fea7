"""Chatter's wire protocol: every message type and the frame codec; pure code, no sockets (those are ``transport``)."""
