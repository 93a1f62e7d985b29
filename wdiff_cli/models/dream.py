"""Dream (Dream-org/Dream-v0-*-7B): Qwen2 names, qkv bias, GQA, logits shifted by one.

Checkpoint tree: model.{embed_tokens, layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, norm}, lm_head.
"""

from __future__ import annotations

import torch.nn as nn

from .core import Block, DiffusionLM, ModelArgs, RMSNorm, head_dim_of


def args_from_config(cfg: dict) -> ModelArgs:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported Dream config: hidden_act={cfg['hidden_act']!r} (wdiff implements 'silu')")
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"unsupported Dream config: rope_scaling={scaling!r} (wdiff implements default RoPE)")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return ModelArgs(
        family="dream",
        d_model=d,
        n_layers=cfg["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or head_dim_of(d, heads),
        mlp_hidden=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_positions=cfg.get("max_position_embeddings", 32768),
        qkv_bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        shift_logits=True,
        rope_fp32=False,
        mask_id=cfg.get("mask_token_id", 151666),
        eos_id=cfg.get("eos_token_id"),
        pad_id=cfg.get("pad_token_id"),
    )


class DreamBlock(Block):
    NAMES = dict(attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
                 v="self_attn.v_proj", o="self_attn.o_proj", mlp_norm="post_attention_layernorm",
                 gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj")

    def __init__(self, a: ModelArgs, layer: int):
        super().__init__(a, layer)
        c, hd = a.d_model, a.head_dim
        self.input_layernorm = RMSNorm(c, a.norm_eps)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(c, a.n_heads * hd, bias=True)
        self.self_attn.k_proj = nn.Linear(c, a.n_kv_heads * hd, bias=True)
        self.self_attn.v_proj = nn.Linear(c, a.n_kv_heads * hd, bias=True)
        self.self_attn.o_proj = nn.Linear(a.n_heads * hd, c, bias=False)
        self.post_attention_layernorm = RMSNorm(c, a.norm_eps)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(c, a.mlp_hidden, bias=False)
        self.mlp.up_proj = nn.Linear(c, a.mlp_hidden, bias=False)
        self.mlp.down_proj = nn.Linear(a.mlp_hidden, c, bias=False)


class DreamModel(DiffusionLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(args.vocab_size, args.d_model)
        self.model.layers = nn.ModuleList(DreamBlock(args, i) for i in range(args.n_layers))
        self.model.norm = RMSNorm(args.d_model, args.norm_eps)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        m = self.model
        self.bind(m.embed_tokens, m.layers, m.norm, None if args.tie_embeddings else self.lm_head)
