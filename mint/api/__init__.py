"""The HTTP face: OpenAI-compatible inference (and, as they land, the Tinker API, ingest, console)."""
