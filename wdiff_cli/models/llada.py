"""LLaDA (GSAI-ML/LLaDA-8B-*, LLaDA-1.5): OLMo-style names, no logit shift.

Checkpoint tree: model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out,
ff_norm, ff_proj, up_proj, ff_out}, ln_f, ff_out}. ff_proj is the SiLU-gated branch.
"""

from __future__ import annotations

import torch.nn as nn

from .core import Block, DiffusionLM, ModelArgs, RMSNorm, head_dim_of

UNSUPPORTED = {  # config field -> value we implement
    "alibi": False,
    "attention_layer_norm": False,
    "clip_qkv": None,
    "include_bias": False,
    "layer_norm_type": "rms",
    "activation_type": "silu",
}


def args_from_config(cfg: dict) -> ModelArgs:
    for key, ok in UNSUPPORTED.items():
        if key in cfg and cfg[key] != ok:
            raise ValueError(f"unsupported LLaDA config: {key}={cfg[key]!r} (wdiff implements {key}={ok!r})")
    if cfg.get("block_type", "llama") != "llama":
        raise ValueError(f"unsupported LLaDA config: block_type={cfg['block_type']!r} (wdiff implements 'llama')")
    d, heads = cfg["d_model"], cfg["n_heads"]
    kv = 1 if cfg.get("multi_query_attention") else (cfg.get("n_kv_heads") or heads)
    return ModelArgs(
        family="llada",
        d_model=d,
        n_layers=cfg["n_layers"],
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim_of(d, heads),
        mlp_hidden=cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d,
        vocab_size=cfg.get("embedding_size") or cfg["vocab_size"],
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        max_positions=cfg.get("max_sequence_length", 4096),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        tie_embeddings=bool(cfg.get("weight_tying", False)),
        shift_logits=False,
        rope_fp32=bool(cfg.get("rope_full_precision", True)),
        mask_id=cfg.get("mask_token_id", 126336),
        eos_id=cfg.get("eos_token_id"),
        pad_id=cfg.get("pad_token_id"),
        input_emb_scale=d**0.5 if cfg.get("input_emb_norm") else 1.0,
        logit_scale=d**-0.5 if cfg.get("scale_logits") else 1.0,
    )


class LLaDABlock(Block):
    NAMES = dict(attn_norm="attn_norm", q="q_proj", k="k_proj", v="v_proj", o="attn_out",
                 mlp_norm="ff_norm", gate="ff_proj", up="up_proj", down="ff_out")

    def __init__(self, a: ModelArgs, layer: int):
        super().__init__(a, layer)
        c, hd = a.d_model, a.head_dim
        self.attn_norm = RMSNorm(c, a.norm_eps)
        self.q_proj = nn.Linear(c, a.n_heads * hd, bias=a.qkv_bias)
        self.k_proj = nn.Linear(c, a.n_kv_heads * hd, bias=a.qkv_bias)
        self.v_proj = nn.Linear(c, a.n_kv_heads * hd, bias=a.qkv_bias)
        self.attn_out = nn.Linear(a.n_heads * hd, c, bias=False)
        self.ff_norm = RMSNorm(c, a.norm_eps)
        self.ff_proj = nn.Linear(c, a.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(c, a.mlp_hidden, bias=False)
        self.ff_out = nn.Linear(a.mlp_hidden, c, bias=False)


class LLaDAModel(DiffusionLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        tr = nn.Module()
        tr.wte = nn.Embedding(args.vocab_size, args.d_model)
        tr.blocks = nn.ModuleList(LLaDABlock(args, i) for i in range(args.n_layers))
        tr.ln_f = RMSNorm(args.d_model, args.norm_eps)
        if not args.tie_embeddings:
            tr.ff_out = nn.Linear(args.d_model, args.vocab_size, bias=False)
        self.model = nn.Module()
        self.model.transformer = tr
        self.bind(tr.wte, tr.blocks, tr.ln_f, None if args.tie_embeddings else tr.ff_out)
