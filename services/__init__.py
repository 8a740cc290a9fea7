"""Chatter's processes: coordinator, generator, persister and the mock LLM."""
