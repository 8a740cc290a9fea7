"""The generator: runs upstream chat-completion streams and turns them into seq-numbered deltas."""
