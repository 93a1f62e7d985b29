"""Error types the CLI turns into one-line messages (no heavy imports here)."""


class GenerationError(ValueError):
    """Bad settings or input; the message is one actionable line."""
