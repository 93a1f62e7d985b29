"""wdiff: fast inference for diffusion language models (LLaDA, Dream) with Window-Diffusion.

Public API (imports torch lazily)::

    from wdiff_cli import load, generate, stream, Settings
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("generate", "stream", "Settings", "Result", "GenerationError"):
        from . import engine

        return getattr(engine, name)
    if name in ("load", "ModelLoadError"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(name)


__all__ = ["load", "generate", "stream", "Settings", "Result", "GenerationError", "ModelLoadError", "__version__"]
