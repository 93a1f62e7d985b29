"""Model registry: config.json ``model_type`` -> (args_from_config, Model class)."""

from __future__ import annotations

from . import dream, llada
from .core import Attend, DiffusionLM, KVCache, ModelArgs

MODEL_TYPES = {
    "llada": (llada.args_from_config, llada.LLaDAModel),
    "dream": (dream.args_from_config, dream.DreamModel),
}


class UnknownArchitectureError(ValueError):
    pass


def family_of(config: dict) -> str:
    mt = str(config.get("model_type", "")).lower()
    if mt in MODEL_TYPES:
        return mt
    arch = " ".join(config.get("architectures") or []).lower()
    for name in MODEL_TYPES:
        if name in arch:
            return name
    raise UnknownArchitectureError(
        f"unknown architecture model_type={config.get('model_type')!r} "
        f"architectures={config.get('architectures')!r}; wdiff supports {', '.join(MODEL_TYPES)}"
    )


def build_model(config: dict) -> DiffusionLM:
    """Instantiate (on the current default device) the model described by a config.json dict."""
    args_fn, cls = MODEL_TYPES[family_of(config)]
    return cls(args_fn(config))


__all__ = ["MODEL_TYPES", "build_model", "family_of", "Attend", "KVCache", "ModelArgs", "DiffusionLM",
           "UnknownArchitectureError"]
