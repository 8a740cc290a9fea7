"""The mock LLM: an OpenAI-compatible server whose output is a pure function of the request."""
