"""Write a random-weight LLaDA- or Dream-format checkpoint directory of a chosen shape.

The directory holds what a real checkpoint holds: ``config.json`` in the family's original format
(the parity checkpoint's config with the shape fields replaced), ``model.safetensors`` with the
original tensor names, and a copy of the parity checkpoint's tokenizer files (vocabulary 512, so
the default ``--vocab 512`` matches it). The LM-head rows of the mask token (and of BOS, as the
parity checkpoints do) are zero, so the model never predicts them.

    python scripts/make_random_checkpoint.py /tmp/llada-512 --family llada \
        --d-model 512 --layers 8 --heads 8 --mlp 1376

Weights: embeddings N(0, 1), projections N(0, gain / sqrt(fan_in)), LM head N(0, head_gain /
sqrt(d_model)), norms 1, biases N(0, 0.02). Such a model has peaked but arbitrary predictions:
good for timing and for exercising the samplers, meaningless as text.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "parity" / "checkpoints"
TEMPLATES = {"llada": "llada-pub", "dream": "dream-pub"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def shaped_config(template: dict, family: str, d_model: int, layers: int, heads: int, kv_heads: int | None,
                  mlp: int, vocab: int, max_positions: int | None) -> dict:
    cfg = dict(template)
    if family == "llada":
        cfg.update(d_model=d_model, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads or heads,
                   mlp_hidden_size=mlp, embedding_size=vocab, vocab_size=vocab)
        if max_positions:
            cfg["max_sequence_length"] = max_positions
    else:
        cfg.update(hidden_size=d_model, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=kv_heads or heads, intermediate_size=mlp, vocab_size=vocab,
                   max_window_layers=layers)
        if max_positions:
            cfg["max_position_embeddings"] = max_positions
    return cfg


def random_state(cfg: dict, seed: int, gain: float, head_gain: float) -> dict:
    """Random tensors for every parameter the config implies (names from wdiff's model classes)."""
    import torch

    from wdiff_cli.models import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    a = model.args
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.state_dict().items():
        shape = tuple(p.shape)
        leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        if name.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.02
        elif len(shape) == 1:
            t = torch.ones(shape)
        elif leaf in ("wte", "embed_tokens"):
            t = torch.randn(shape, generator=g)
        elif leaf in ("ff_out", "lm_head") and shape[0] == a.vocab_size:
            t = torch.randn(shape, generator=g) * (head_gain / a.d_model**0.5)
        else:
            t = torch.randn(shape, generator=g) * (gain / shape[1] ** 0.5)
        out[name] = t.float().contiguous()
    return out, a


def lm_head_name(state: dict, vocab: int) -> str | None:
    for name in ("model.transformer.ff_out.weight", "lm_head.weight"):
        if name in state and state[name].shape[0] == vocab:
            return name
    return None


def write_checkpoint(out: Path, family: str = "llada", d_model: int = 64, layers: int = 2, heads: int = 4,
                     kv_heads: int | None = None, mlp: int = 128, vocab: int = 512, seed: int = 0,
                     gain: float = 1.0, head_gain: float = 4.0, max_positions: int | None = None,
                     template_dir: Path | None = None) -> Path:
    """Write the checkpoint directory ``out``; returns it. Raises FileNotFoundError without a template."""
    from safetensors.torch import save_file

    src = Path(template_dir) if template_dir else SHARED / TEMPLATES[family]
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"template checkpoint {src} not found (the parity checkpoints in ../shared)")
    template = json.loads((src / "config.json").read_text())
    cfg = shaped_config(template, family, d_model, layers, heads, kv_heads, mlp, vocab, max_positions)
    state, args = random_state(cfg, seed, gain, head_gain)
    head = lm_head_name(state, vocab)
    if head is not None:  # never predict the mask, BOS, or rows the tokenizer lacks
        n_tok = _tokenizer_size(src) or vocab
        for r in {args.mask_id, _special_id(src, "bos_token"), *range(n_tok, vocab)}:
            if r is not None and 0 <= r < vocab:
                state[head][r] = 0.0
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
            (out / name).chmod(0o644)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _tokenizer_size(src: Path) -> int | None:
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    except Exception:
        return None


def _special_id(src: Path, key: str) -> int | None:
    try:
        tc = json.loads((src / "tokenizer_config.json").read_text())
        content = tc.get(key)
        for i, d in tc.get("added_tokens_decoder", {}).items():
            if d.get("content") == content:
                return int(i)
    except (OSError, json.JSONDecodeError):
        pass
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output checkpoint directory")
    ap.add_argument("--family", choices=sorted(TEMPLATES), default="llada")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    ap.add_argument("--mlp", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=512, help="rows of the embedding/LM head (tokenizer has 512)")
    ap.add_argument("--max-positions", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gain", type=float, default=1.0, help="projection std * sqrt(fan_in)")
    ap.add_argument("--head-gain", type=float, default=4.0, help="LM-head std * sqrt(d_model)")
    ap.add_argument("--template", type=Path, default=None, help="checkpoint whose config/tokenizer to copy")
    a = ap.parse_args(argv)
    path = write_checkpoint(a.out, a.family, a.d_model, a.layers, a.heads, a.kv_heads, a.mlp, a.vocab, a.seed,
                            a.gain, a.head_gain, a.max_positions, a.template)
    n = sum(1 for _ in path.iterdir())
    print(f"wrote {path} ({n} files)")


if __name__ == "__main__":
    main()
