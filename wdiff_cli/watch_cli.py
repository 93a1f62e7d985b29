"""``wdiff watch``: registered on the main app; imports Textual only when the command runs."""


def register(app) -> None:
    pass
