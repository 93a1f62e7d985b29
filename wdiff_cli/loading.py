"""Checkpoint directory or alias -> model on a device, tokenizer, special ids.

Loading is strict (every tensor of the checkpoint maps to exactly one parameter, same shape) and
memory-lean: the model is built on the meta device and each tensor is converted to the target
dtype one at a time, so an 8B bf16 checkpoint never exists as an fp32 copy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "builtin"

# alias -> (hub repository, chat template by default)
HUB_ALIASES = {
    "llada": ("GSAI-ML/LLaDA-8B-Instruct", True),
    "llada-base": ("GSAI-ML/LLaDA-8B-Base", False),
    "llada-1.5": ("GSAI-ML/LLaDA-1.5", True),
    "dream": ("Dream-org/Dream-v0-Instruct-7B", True),
    "dream-base": ("Dream-org/Dream-v0-Base-7B", False),
}
BUILTIN_ALIASES = {"tiny": "tiny", "tiny-dream": "tiny-dream"}
DEFAULT_MODEL = "tiny"


class ModelLoadError(Exception):
    """A checkpoint that cannot be found or loaded; the message is one actionable line."""


@dataclass
class Loaded:
    model: object  # DiffusionLM
    tokenizer: object  # transformers tokenizer
    name: str
    path: Path
    chat_default: bool
    mask_id: int
    eos_id: int | None


def resolve(name: str) -> tuple[Path, bool]:
    """Model name (built-in alias, hub alias, or directory) -> (local directory, chat default)."""
    if name in BUILTIN_ALIASES:
        path = BUILTIN_DIR / BUILTIN_ALIASES[name]
        if not (path / "config.json").exists():
            raise ModelLoadError(f"built-in model {name!r} is missing from {path}; reinstall wdiff")
        return path, False
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"--model {name}: not a directory (expected a checkpoint directory with config.json)")
        return p, "instruct" in p.name.lower()
    if name in HUB_ALIASES:
        repo, chat = HUB_ALIASES[name]
        return _from_hub(name, repo), chat
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return _from_hub(name, name), "instruct" in name.lower()
    known = ", ".join(list(BUILTIN_ALIASES) + list(HUB_ALIASES))
    raise ModelLoadError(f"unknown model {name!r}: not a directory, and not an alias ({known})")


def _from_hub(alias: str, repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = (f"model {alias!r} ({repo}) is not in the local Hugging Face cache"
            f"{' and HF_HUB_OFFLINE is set' if offline else ''}; run `huggingface-cli download {repo}` "
            f"where the hub is reachable, or pass a local checkpoint directory with --model PATH")
    if offline:
        raise ModelLoadError(hint)
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network errors come in many types
        raise ModelLoadError(f"{hint} (download failed: {type(e).__name__})") from None


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{path}: no config.json (not a checkpoint directory)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: corrupt config.json ({e})") from None


def safetensor_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: corrupt index ({e})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights found")
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"{path}: shard {f.name} listed in the index is missing")
    return files


def pick_device(device: str) -> "torch.device":
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ModelLoadError(f"unknown --device {device!r} (use auto, cpu, cuda or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def pick_dtype(dtype: str, device) -> "torch.dtype":
    import torch

    if dtype == "auto":
        # bf16 matmuls are ~6x slower than fp32 on CPUs without AMX; GPUs want bf16
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown --dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return table[dtype]


def linear_weight_names(model) -> set[str]:
    import torch.nn as nn

    return {f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


def load_weights(model, path: Path, device, dtype) -> None:
    """Strictly load safetensors into a meta-initialised model, tensor by tensor.

    On CPU, linear weights are stored column-major ((in, out) contiguous, seen as (out, in)):
    oneDNN/MKL run the small-M matmuls of windowed steps ~1.4x faster in that layout (measured
    M=17..31, d=256..1376), and large M is unchanged.
    """
    import torch
    from safetensors import safe_open

    expected = dict(model.state_dict(keep_vars=True))
    column_major = linear_weight_names(model) if torch.device(device).type == "cpu" else set()
    seen: dict[str, object] = {}
    for f in safetensor_files(path):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as st:
                for key in st.keys():
                    if key in expected and key not in seen:
                        t = st.get_tensor(key)
                        want = tuple(expected[key].shape)
                        if tuple(t.shape) != want:
                            raise ModelLoadError(f"{f.name}: tensor {key} has shape {tuple(t.shape)}, "
                                                 f"the config implies {want}")
                        t = t.to(device=device, dtype=dtype)
                        seen[key] = t.t().contiguous().t() if key in column_major else t
                    else:
                        seen.setdefault(key, None)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot read safetensors ({type(e).__name__}: {e})") from None
    missing = [k for k in expected if k not in seen]
    unexpected = [k for k, v in seen.items() if v is None and k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise ModelLoadError(f"{path}: checkpoint does not match the config: {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in seen.items() if v is not None}, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def load(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", tokenizer: bool = True) -> Loaded:
    """Load a model by alias or directory. Errors are ModelLoadError with a one-line message."""
    import torch

    from .models import UnknownArchitectureError, build_model

    path, chat = resolve(name)
    config = read_config(path)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        with torch.device("meta"):
            model = build_model(config)
    except (UnknownArchitectureError, ValueError, KeyError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"config.json lacks field {e}"
        raise ModelLoadError(f"{path}: {msg}") from None
    load_weights(model, path, dev, dt)
    model.eval()
    tok = load_tokenizer(path) if tokenizer else None
    a = model.args
    mask_id = a.mask_id
    eos_id = a.eos_id
    if tok is not None:
        if getattr(tok, "mask_token_id", None) is not None and config.get("mask_token_id") is None:
            mask_id = tok.mask_token_id
        if eos_id is None:
            eos_id = tok.eos_token_id
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    if mask_id != a.mask_id or eos_id != a.eos_id:
        from dataclasses import replace

        model.args = replace(a, mask_id=mask_id, eos_id=eos_id)
    return Loaded(model=model, tokenizer=tok, name=name, path=path, chat_default=chat, mask_id=mask_id, eos_id=eos_id)
