"""``wdiff bench``: registered on the main app."""


def register(app) -> None:
    pass
