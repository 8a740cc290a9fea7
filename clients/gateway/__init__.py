"""The gateway: OpenAI's Responses API over HTTP, a client of the coordinator like the CLI (DESIGN.md, "The HTTP
face")."""
