"""Train a small masked-diffusion LM (LLaDA or Dream layout) on a folder of plain-text works.

This is how the built-in ``tiny`` (LLaDA) and ``tiny-dream`` (Dream) models are made::

    python -m wdiff_cli.train --corpus ../shared/data/shakespeare --family llada \\
        --out wdiff_cli/builtin/tiny --run-dir /work/runs/tiny
    python -m wdiff_cli.train --eval-only --out wdiff_cli/builtin/tiny --corpus ../shared/data/shakespeare

Pipeline:

1. Corpus: every ``*.txt`` in the folder is one work (``README``/``METADATA`` files are skipped).
   A few works (``val_works``) are held out for validation; the rest are the training split.
2. Tokenizer: byte-level BPE trained with ``tokenizers`` on the training split, plus two special
   tokens at the end of the vocabulary, ``<|endoftext|>`` (eos = pad) and ``<|mask|>``. Saved as a
   ``PreTrainedTokenizerFast`` (no post-processor: nothing is added automatically).
3. Data: each training row is ``seq_len`` tokens, either (with probability ``doc_frac``) a
   *document* -- a run of whole paragraphs starting at a paragraph boundary, random length --
   followed by ``<|endoftext|>`` and ``<|endoftext|>`` padding to ``seq_len`` (as LLaDA's SFT
   data), so the model learns to stop; or a plain window of the token stream (works joined by
   ``<|endoftext|>``).
4. Objective (LLaDA pre-training): per row ``t ~ U(0, 1)`` (stratified over the batch),
   ``p = (1 - eps) t + eps``; each token is replaced by the mask id with probability ``p``; the
   loss is the cross-entropy on masked positions weighted ``1/p``, summed and divided by the
   number of maskable tokens ``B * L``. Dream: the same, but the prediction for position ``i``
   comes from the logits at ``i - 1`` (the shift Dream's sampler applies,
   ``cat(logits[:, :1], logits[:, :-1])``); position 0 is never masked, so ``L = T - 1``.
5. Checkpoints: the resumable state (fp32 weights, AdamW state, step) goes to ``run_dir``;
   every checkpoint also exports ``config.json`` (the original LLaDA/Dream checkpoint format),
   ``model.safetensors`` (bf16 by default) and the tokenizer to ``out``, so a partial run is usable.

Determinism: the model init uses ``seed``; the batch and the masks of step ``s`` come from
generators seeded with ``(seed, s)``, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EOS = "<|endoftext|>"
MASK = "<|mask|>"
DEFAULT_VAL_WORKS = ("sonnets", "tempest")
NOT_CORPUS = {"readme", "metadata", "license", "licence"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
EPS = 1e-3


# --------------------------------------------------------------------------------------------
# corpus and tokenizer


def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def read_corpus(corpus: str | os.PathLike) -> dict[str, str]:
    """Folder of ``*.txt`` works -> {work name: normalised text}, sorted by name."""
    root = Path(corpus).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus {root} is not a directory")
    works = {}
    for f in sorted(root.glob("*.txt")):
        if f.stem.lower() in NOT_CORPUS:
            continue
        works[f.stem] = normalise(f.read_text(encoding="utf-8", errors="replace"))
    if not works:
        raise FileNotFoundError(f"corpus {root} has no *.txt works")
    return works


def split_works(works: dict[str, str], val_works) -> tuple[dict[str, str], dict[str, str]]:
    names = [w[:-4] if w.endswith(".txt") else w for w in val_works]
    missing = [n for n in names if n not in works]
    if missing:
        raise ValueError(f"validation works not in the corpus: {', '.join(missing)}")
    val = {n: works[n] for n in names}
    train = {n: t for n, t in works.items() if n not in val}
    if not train:
        raise ValueError("no training works left after holding out the validation works")
    return train, val


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with ``vocab_size`` entries in all; the two special tokens are the last ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([EOS, MASK])
    return tok


def save_tokenizer(tok, out: Path, max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (PreTrainedTokenizerFast)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, mask_token=MASK,
                                   model_max_length=max_length, clean_up_tokenization_spaces=False)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    if not cfg.get("extra_special_tokens"):  # transformers>=4.46 writes an empty dict; keep the classic layout
        cfg.pop("extra_special_tokens", None)
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    for extra in ("added_tokens.json", "vocab.json", "merges.txt"):  # slow-tokenizer leftovers, if any
        if (out / extra).exists():
            (out / extra).unlink()


def load_tokenizer_file(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


class Stream:
    """Works tokenised and joined by EOS, with the token indices where paragraphs start."""

    def __init__(self, tok, works: dict[str, str], eos_id: int):
        ids: list[int] = []
        starts: list[int] = []  # paragraph starts (document starts)
        ends: list[int] = []  # paragraph starts and work ends (document ends)
        work_end: list[int] = []  # per start: index of the EOS after its work
        for text in works.values():
            enc = tok.encode(text)
            base = len(ids)
            para = {m.end() for m in re.finditer(r"\n\n+", text)} | {0}
            s = [base + i for i, (a, _) in enumerate(enc.offsets) if a in para]
            ids.extend(enc.ids)
            ids.append(eos_id)
            end = len(ids) - 1
            starts.extend(s)
            ends.extend(s[1:] + [end])
            work_end.extend([end] * len(s))
        self.ids = np.asarray(ids, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(sorted(set(ends)), dtype=np.int64)
        self.work_end = np.asarray(work_end, dtype=np.int64)
        self.eos_id = eos_id
        vocab = tok.get_vocab()
        inv = {i: s for s, i in vocab.items()}
        self.ws = np.zeros(max(vocab.values()) + 1, dtype=bool)  # token is whitespace only
        for i, s in inv.items():
            self.ws[i] = bool(s) and tok.decode([i]).strip() == "" and s not in (EOS, MASK)

    def __len__(self) -> int:
        return len(self.ids)

    def window(self, start: int, T: int) -> np.ndarray:
        return self.ids[start: start + T]

    def document(self, rng: np.random.Generator, T: int, min_len: int = 8) -> np.ndarray | None:
        """Whole paragraphs from a random paragraph start, then EOS padding to T (None: no fit)."""
        i = int(rng.integers(len(self.starts)))
        a = int(self.starts[i])
        limit = min(a + int(rng.integers(min_len, T)), int(self.work_end[i]))  # at most T - 1 tokens
        j = bisect.bisect_right(self.ends, limit) - 1
        b = int(self.ends[j]) if j >= 0 else a
        while b > a and self.ws[self.ids[b - 1]]:
            b -= 1
        if b <= a:
            return None
        row = np.full(T, self.eos_id, dtype=np.int64)
        row[: b - a] = self.ids[a:b]
        return row

    def batch(self, rng: np.random.Generator, B: int, T: int, doc_frac: float) -> torch.Tensor:
        rows = []
        for _ in range(B):
            row = None
            if rng.random() < doc_frac:
                for _ in range(8):
                    row = self.document(rng, T)
                    if row is not None:
                        break
            if row is None:
                row = self.window(int(rng.integers(0, len(self.ids) - T + 1)), T)
            rows.append(row)
        return torch.from_numpy(np.stack(rows))

    def tiles(self, T: int) -> torch.Tensor:
        """Non-overlapping windows covering the stream (the validation set)."""
        n = len(self.ids) // T
        return torch.from_numpy(self.ids[: n * T].reshape(n, T).copy())


# --------------------------------------------------------------------------------------------
# objective


def forward_process(x: torch.Tensor, mask_id: int, generator: torch.Generator, shift: bool,
                    t: torch.Tensor | None = None, eps: float = EPS):
    """Mask each token with probability p = (1-eps) t + eps. Returns (noisy x, mask, p per row).

    ``t`` defaults to a stratified draw: one uniform offset u, t_b = (u + b/B) mod 1, so every row
    still has t ~ U(0, 1) but the batch covers all noise levels. With ``shift`` (Dream) position 0
    is never masked.
    """
    B, T = x.shape
    if t is None:
        u = torch.rand(1, generator=generator)
        t = (u + torch.arange(B) / B) % 1.0
    p = (1 - eps) * t + eps
    m = torch.rand(B, T, generator=generator) < p[:, None]
    if shift:
        m[:, 0] = False
    return x.masked_fill(m, mask_id), m, p


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream: the logits at p predict token p+1; realign so row p predicts token p."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class CausalAttend:
    """Causal self-attention for the autoregressive warm-up (Dream-style AR initialisation).

    Plugs into the model's ``attend`` hook (see ``models.core.Attend``); nothing is cached.
    """

    def __call__(self, layer: int, q, k, v, n_rep: int) -> torch.Tensor:
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def ar_loss(logits: torch.Tensor, x: torch.Tensor):
    """Next-token cross-entropy (logits at p predict token p+1). Returns (loss, correct)."""
    lg, tgt = logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
    loss = F.cross_entropy(lg.float(), tgt)
    with torch.no_grad():
        correct = lg.argmax(-1) == tgt
    return loss, correct


def diffusion_loss(logits: torch.Tensor, x: torch.Tensor, m: torch.Tensor, p: torch.Tensor, shift: bool):
    """sum over masked positions of CE / p, divided by the maskable tokens B * (T - shift).

    Returns (loss, per-masked-token CE, per-masked-token correct) -- the last two detached.
    """
    if shift:
        logits = shift_logits(logits)
    B, T = x.shape
    ce = F.cross_entropy(logits[m].float(), x[m], reduction="none")
    w = (1.0 / p)[:, None].expand(B, T)[m]
    loss = (ce * w).sum() / (B * (T - int(shift)))
    with torch.no_grad():
        correct = logits[m].argmax(-1) == x[m]
    return loss, ce.detach(), correct


@torch.no_grad()
def masked_metrics(model, seqs: torch.Tensor, ratio: float, mask_id: int, shift: bool, seed: int = 1234,
                   batch_size: int = 16) -> dict:
    """Mask exactly round(ratio * maskable) positions per row (fixed seed); mean CE and accuracy there."""
    g = torch.Generator().manual_seed(seed)
    tot_ce, tot_ok, n = 0.0, 0, 0
    for i in range(0, len(seqs), batch_size):
        x = seqs[i: i + batch_size]
        B, T = x.shape
        lo = int(shift)
        k = max(1, round(ratio * (T - lo)))
        order = torch.rand(B, T - lo, generator=g).argsort(-1)[:, :k] + lo
        m = torch.zeros(B, T, dtype=torch.bool).scatter_(1, order, True)
        pos = torch.arange(T).expand(B, T)
        logits = model(x.masked_fill(m, mask_id), pos)
        if shift:
            logits = shift_logits(logits)
        lg, tgt = logits[m].float(), x[m]
        tot_ce += F.cross_entropy(lg, tgt, reduction="sum").item()
        tot_ok += int((lg.argmax(-1) == tgt).sum())
        n += int(m.sum())
    return {"loss": tot_ce / n, "acc": tot_ok / n, "tokens": n}


# --------------------------------------------------------------------------------------------
# model configs in the original checkpoint formats


def _round_up(n: int, k: int = 64) -> int:
    return (n + k - 1) // k * k


def model_config(family: str, *, vocab: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int,
                 mlp_hidden: int, seq_len: int, eos_id: int, mask_id: int, max_positions: int,
                 dtype: str = "bfloat16") -> dict:
    """config.json dict with the field set of the public LLaDA / Dream checkpoints."""
    padded = _round_up(vocab)
    if family == "llada":
        return {
            "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                         "AutoModel": "modeling_llada.LLaDAModelLM",
                         "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
            "d_model": d_model, "embedding_dropout": 0.0, "embedding_size": padded, "eos_token_id": eos_id,
            "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
            "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
            "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "mask_token_id": mask_id, "max_sequence_length": max_positions, "mlp_hidden_size": mlp_hidden,
            "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": n_heads,
            "n_kv_heads": n_kv_heads, "n_layers": n_layers, "pad_token_id": eos_id, "precision": "amp_bf16",
            "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
            "rope_theta": 10000.0, "scale_logits": False, "torch_dtype": dtype,
            "train_max_sequence_length": seq_len, "transformers_version": "4.46.3", "use_cache": False,
            "vocab_size": vocab, "weight_tying": False,
        }
    if family == "dream":
        return {
            "architectures": ["DreamModel"], "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                         "AutoModel": "modeling_dream.DreamModel"},
            "bos_token_id": eos_id, "eos_token_id": eos_id, "hidden_act": "silu", "hidden_size": d_model,
            "initializer_range": 0.02, "intermediate_size": mlp_hidden, "mask_token_id": mask_id,
            "max_position_embeddings": max_positions, "max_window_layers": n_layers, "model_type": "Dream",
            "num_attention_heads": n_heads, "num_hidden_layers": n_layers, "num_key_value_heads": n_kv_heads,
            "pad_token_id": eos_id, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
            "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": dtype,
            "transformers_version": "4.46.3", "use_cache": False, "use_sliding_window": False,
            "vocab_size": padded,
        }
    raise ValueError(f"unknown family {family!r} (use llada or dream)")


def init_weights(model: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """Normal(0, std) matrices and embeddings, residual-output projections scaled by 1/sqrt(2 L)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name.split(".")[-1]
            residual_out = last in ("attn_out", "o_proj", "down_proj") or (last == "ff_out" and ".blocks." in name)
            nn.init.normal_(mod.weight, 0.0, std / math.sqrt(2 * n_layers) if residual_out else std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, 0.0, std)


# --------------------------------------------------------------------------------------------
# checkpoints


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def export(model: nn.Module, config: dict, tok_dir: Path, out: Path, meta: dict | None = None,
           dtype: torch.dtype = torch.bfloat16) -> None:
    """Write config.json, generation_config.json, model.safetensors and the tokenizer to ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / "model.safetensors")
    for f in TOKENIZER_FILES:
        shutil.copyfile(tok_dir / f, out / f)
    eos = config["eos_token_id"]
    gen = {"_from_model_config": True, "eos_token_id": eos, "pad_token_id": eos,
           "transformers_version": "4.46.3", "use_cache": False}
    if config.get("model_type") == "Dream":
        gen["bos_token_id"] = config["bos_token_id"]
    _atomic_write(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    _atomic_write(out / "config.json", json.dumps(config, indent=2) + "\n")
    if meta is not None:
        _atomic_write(out / "training.json", json.dumps(meta, indent=2) + "\n")


def lr_at(step: int, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup, then cosine from lr down to min_ratio * lr at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _log(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr)
    sys.stderr.flush()


@torch.no_grad()
def sample(model, tokenizer, prompt: str, gen_length: int = 64, steps: int | None = None,
           block_length: int | None = None) -> str:
    """Greedy vanilla generation with the project's sampler (for monitoring and sanity checks)."""
    from .strategies.base import Canvas, Sampling
    from .strategies.vanilla import VanillaConfig, run

    a = model.args
    ids = tokenizer.encode(prompt).ids if hasattr(tokenizer, "get_vocab_size") else \
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
    was_training = model.training
    model.eval()
    canvas = Canvas([ids], gen_length, a.mask_id, a.eos_id, torch.device("cpu"))
    for _ in run(model, canvas, Sampling(), VanillaConfig(steps=steps or gen_length, block_length=block_length),
                 level="counts"):
        pass
    model.train(was_training)
    out = canvas.generated()[0]
    if a.eos_id in out:
        out = out[: out.index(a.eos_id)]
    return tokenizer.decode(out)


# --------------------------------------------------------------------------------------------
# training


def train(corpus: str, out: str, family: str = "llada", *, d_model: int = 192, n_layers: int = 4,
          n_heads: int = 4, n_kv_heads: int | None = None, mlp_hidden: int | None = None,
          vocab_size: int = 4096, seq_len: int = 256, batch_size: int = 16, lr: float = 2e-3,
          min_lr_ratio: float = 0.1, warmup: int = 100, weight_decay: float = 0.1, max_steps: int = 2000,
          max_minutes: float | None = None, seed: int = 0, eval_every: int = 200, eval_rows: int = 32,
          val_works=DEFAULT_VAL_WORKS, doc_frac: float = 0.5, ar_steps: int | None = None,
          run_dir: str | None = None, resume: bool = False, threads: int = 1, save_dtype: str = "float32",
          max_positions: int | None = None, progress: bool = True, sample_prompt: str | None = None) -> dict:
    """Train a masked-diffusion LM; export config/weights/tokenizer to ``out``. Returns a summary.

    ``max_steps`` sets the learning-rate schedule; ``max_minutes`` (wall clock, summed over
    resumed segments) stops earlier. The first ``ar_steps`` steps (default 30% of
    ``max_steps``) are an autoregressive warm-up (causal attention, next-token loss); the rest
    use the masked-diffusion objective. The resumable state lives in ``run_dir``
    (default ``runs/<name of out>``); ``resume=True`` continues from it.
    The defaults are the recipe of the built-in models.
    """
    family = family.lower()
    if family not in ("llada", "dream"):
        raise ValueError(f"unknown family {family!r} (use llada or dream)")
    torch.set_num_threads(max(1, int(threads)))
    out_p = Path(out).expanduser()
    run_p = Path(run_dir).expanduser() if run_dir else Path("runs") / out_p.name
    state_file = run_p / "state.pt"
    if state_file.exists() and not resume:
        raise FileExistsError(f"{run_p} already holds a run; pass resume=True (--resume) or another run dir")
    run_p.mkdir(parents=True, exist_ok=True)
    saved = torch.load(state_file, map_location="cpu", weights_only=False) if resume and state_file.exists() else None
    if ar_steps is None:
        ar_steps = saved["opts"].get("ar_steps", 0) if saved else round(0.3 * max_steps)
    if ar_steps >= max_steps:
        raise ValueError(f"ar_steps {ar_steps} leaves no diffusion steps (max_steps {max_steps})")
    shift = family == "dream"
    n_kv_heads = n_kv_heads or (n_heads if family == "llada" else max(1, n_heads // 2))
    mlp_hidden = mlp_hidden or _round_up(int(8 * d_model / 3))
    max_positions = max_positions or 4 * seq_len
    save_dt = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
               "fp32": torch.float32}[save_dtype]

    # data and tokenizer
    works = read_corpus(corpus)
    train_works, val_works_d = split_works(works, val_works)
    tok_dir = run_p / "tokenizer"
    if resume and (tok_dir / "tokenizer.json").exists():
        tok = load_tokenizer_file(tok_dir / "tokenizer.json")
    else:
        t0 = time.time()
        tok = train_tokenizer(list(train_works.values()), vocab_size)
        save_tokenizer(tok, tok_dir, max_positions)
        _log(f"tokenizer: {tok.get_vocab_size()} entries, trained in {time.time() - t0:.1f}s")
    eos_id, mask_id = tok.token_to_id(EOS), tok.token_to_id(MASK)
    train_s = Stream(tok, train_works, eos_id)
    val_s = Stream(tok, val_works_d, eos_id)
    if len(train_s) <= seq_len or len(val_s) <= seq_len:
        raise ValueError(f"corpus too small for seq_len {seq_len} "
                         f"({len(train_s)} training / {len(val_s)} validation tokens)")
    val_all = val_s.tiles(seq_len)
    pick = np.linspace(0, len(val_all) - 1, min(eval_rows, len(val_all))).round().astype(int)
    val_rows = val_all[torch.from_numpy(pick)]
    _log(f"data: {len(train_works)} training works, {len(train_s):,} tokens; validation "
         f"{', '.join(val_works_d)}: {len(val_s):,} tokens ({len(val_all)} windows of {seq_len})")

    # model
    config = model_config(family, vocab=tok.get_vocab_size(), d_model=d_model, n_layers=n_layers,
                          n_heads=n_heads, n_kv_heads=n_kv_heads, mlp_hidden=mlp_hidden, seq_len=seq_len,
                          eos_id=eos_id, mask_id=mask_id, max_positions=max_positions,
                          dtype="bfloat16" if save_dt == torch.bfloat16 else "float32")
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    init_weights(model, n_layers)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95), eps=1e-8)
    opts = dict(family=family, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                mlp_hidden=mlp_hidden, vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size, lr=lr,
                min_lr_ratio=min_lr_ratio, warmup=warmup, weight_decay=weight_decay, max_steps=max_steps,
                seed=seed, doc_frac=doc_frac, val_works=list(val_works_d), ar_steps=ar_steps)
    step, tokens, elapsed, history = 0, 0, 0.0, []
    if saved is not None:
        st = saved
        old = {"ar_steps": 0, **st["opts"]}
        changed = {k: (old.get(k), v) for k, v in opts.items() if k != "max_steps" and old.get(k) != v}
        if changed:
            raise ValueError(f"cannot resume {run_p}: options differ from the saved run: {changed}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, tokens, elapsed, history = st["step"], st["tokens"], st["elapsed"], st["history"]
        _log(f"resumed {run_p} at step {step} ({tokens:,} tokens, {elapsed / 60:.1f} min)")
    _log(f"model: {family}, {n_params / 1e6:.2f}M parameters (d_model {d_model}, {n_layers} layers, "
         f"{n_heads} heads / {n_kv_heads} kv, mlp {mlp_hidden}, vocab {config.get('embedding_size', config['vocab_size'])})")

    def meta(final: bool) -> dict:
        return dict(opts, steps=step, tokens_seen=tokens, minutes=round(elapsed / 60, 2), params=n_params,
                    final=final, corpus=Path(corpus).name, last_eval=history[-1] if history else None)

    def checkpoint(final: bool = False) -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "tokens": tokens,
                 "elapsed": elapsed, "history": history, "opts": opts, "config": config}
        tmp = run_p / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, state_file)
        export(model, config, tok_dir, out_p, meta(final), save_dt)

    def evaluate_now() -> dict:
        model.eval()
        res = {f"{r:g}": masked_metrics(model, val_rows, r, mask_id, shift) for r in (0.15, 0.5, 0.9)}
        model.train()
        return res

    def ratio_str(res: dict) -> str:
        return "  ".join(f"r{k} loss {v['loss']:.3f} acc {v['acc']:.3f}" for k, v in res.items())

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=max_steps, initial=step, file=sys.stderr, dynamic_ncols=True, unit="step",
                       mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"train {family}")
        except ImportError:
            bar = None
    model.train()
    t_seg = time.time()
    base_elapsed = elapsed
    run_loss, run_n, run_ok, run_masked = 0.0, 0, 0, 0
    stop_reason = "max_steps"
    while step < max_steps:
        if max_minutes is not None and elapsed >= max_minutes * 60:
            stop_reason = "max_minutes"
            break
        rng = np.random.default_rng([seed, step])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x = train_s.batch(rng, batch_size, seq_len, doc_frac)
        pos = torch.arange(seq_len).expand(batch_size, seq_len)
        cur_lr = lr_at(step, lr, warmup, max_steps, min_lr_ratio)
        for grp in opt.param_groups:
            grp["lr"] = cur_lr
        if step < ar_steps:  # autoregressive warm-up: causal attention, next-token loss
            loss, ok = ar_loss(model(x, pos, CausalAttend()), x)
        else:
            noisy, m, p = forward_process(x, mask_id, gen, shift)
            loss, _, ok = diffusion_loss(model(noisy, pos), x, m, p, shift)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        elapsed = base_elapsed + time.time() - t_seg
        run_loss += loss.item()
        run_n += 1
        run_ok += int(ok.sum())
        run_masked += ok.numel()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{cur_lr:.2e}",
                            tok_s=f"{tokens / max(elapsed, 1e-9):.0f}", refresh=False)
        if step % eval_every == 0 or step == max_steps:
            res = evaluate_now()
            entry = {"step": step, "tokens": tokens, "minutes": round(elapsed / 60, 2),
                     "train_loss": run_loss / run_n, "train_acc": run_ok / max(1, run_masked), "lr": cur_lr,
                     "val": res}
            history.append(entry)
            run_loss, run_n, run_ok, run_masked = 0.0, 0, 0, 0
            _log(f"step {step} tokens {tokens:,} {elapsed / 60:.1f}min train {entry['train_loss']:.3f} | "
                 f"val {ratio_str(res)}")
            if sample_prompt is not None:
                try:
                    txt = sample(model, tok, sample_prompt, gen_length=48)
                    _log("sample: " + repr(sample_prompt + txt))
                except Exception as e:  # monitoring only
                    _log(f"sample failed: {type(e).__name__}: {e}")
            with open(run_p / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            checkpoint()
            elapsed = base_elapsed + time.time() - t_seg
    if bar is not None:
        bar.close()
    if not history or history[-1]["step"] != step:
        res = evaluate_now()
        history.append({"step": step, "tokens": tokens, "minutes": round(elapsed / 60, 2), "val": res})
        _log(f"step {step} | val {ratio_str(res)}")
    checkpoint(final=True)
    _log(f"done ({stop_reason}): {step} steps, {tokens:,} tokens, {elapsed / 60:.1f} min -> {out_p}")
    return {"out": str(out_p), "run_dir": str(run_p), "steps": step, "tokens": tokens,
            "minutes": elapsed / 60, "params": n_params, "stop": stop_reason, "val": history[-1]["val"]}


# --------------------------------------------------------------------------------------------
# evaluation of an exported model


def evaluate(model_dir: str, corpus: str, ratios=(0.15, 0.5, 0.9), val_works=None, seq_len: int | None = None,
             seed: int = 1234, threads: int | None = None) -> dict:
    """Masked-token loss/accuracy on the held-out works at fixed mask ratios.

    Every non-overlapping ``seq_len`` window of the held-out works (joined by EOS) is masked at
    exactly ``ratio`` of its maskable positions (fixed seed); loss and accuracy are means over
    the masked tokens. Held-out works and seq_len default to the ones recorded in training.json.
    """
    from .loading import load

    if threads:
        torch.set_num_threads(threads)
    ld = load(model_dir, device="cpu", dtype="float32")
    meta_f = ld.path / "training.json"
    meta = json.loads(meta_f.read_text()) if meta_f.exists() else {}
    val_works = val_works or meta.get("val_works") or list(DEFAULT_VAL_WORKS)
    seq_len = seq_len or meta.get("seq_len") or 256
    _, val = split_works(read_corpus(corpus), val_works)
    stream = Stream(ld.tokenizer.backend_tokenizer, val, ld.eos_id)
    seqs = stream.tiles(seq_len)
    shift = ld.model.args.shift_logits
    res = {f"{r:g}": masked_metrics(ld.model, seqs, r, ld.mask_id, shift, seed=seed) for r in ratios}
    return {"model": str(ld.path), "val_works": list(val), "seq_len": seq_len, "windows": len(seqs),
            "ratios": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wdiff_cli.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--corpus", required=True, help="folder of *.txt works")
    ap.add_argument("--out", required=True, help="model directory to write (or to evaluate with --eval-only)")
    ap.add_argument("--family", default="llada", choices=["llada", "dream"])
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--n-kv-heads", type=int, default=None, help="default: n_heads (llada), n_heads/2 (dream)")
    ap.add_argument("--mlp-hidden", type=int, default=None, help="default: 8/3 d_model rounded up to 64")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-steps", type=int, default=2000, help="length of the lr schedule")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop earlier after this much wall time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=200, help="validate + checkpoint every N steps")
    ap.add_argument("--val-works", default=",".join(DEFAULT_VAL_WORKS), help="held-out works, comma-separated")
    ap.add_argument("--doc-frac", type=float, default=0.5, help="share of EOS-padded document rows")
    ap.add_argument("--ar-steps", type=int, default=None,
                    help="first N steps: autoregressive warm-up (causal attention, next-token loss); "
                         "default 30%% of --max-steps, 0 = diffusion only")
    ap.add_argument("--run-dir", default=None, help="resumable state (default runs/<name of --out>)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-dtype", default="float32", choices=["bfloat16", "float32"])
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--sample-prompt", default=None, help="log a greedy sample from this prompt at every eval")
    ap.add_argument("--eval-only", action="store_true", help="evaluate --out on the held-out works and exit")
    ap.add_argument("--ratios", default="0.15,0.5,0.9", help="mask ratios for --eval-only")
    a = ap.parse_args(argv)
    val_works = [w for w in a.val_works.split(",") if w]
    if a.eval_only:
        res = evaluate(a.out, a.corpus, tuple(float(r) for r in a.ratios.split(",")),
                       val_works=val_works if a.val_works != ",".join(DEFAULT_VAL_WORKS) else None,
                       threads=a.threads)
        print(json.dumps(res, indent=2))
        return 0
    res = train(a.corpus, a.out, a.family, d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
                n_kv_heads=a.n_kv_heads, mlp_hidden=a.mlp_hidden, vocab_size=a.vocab_size, seq_len=a.seq_len,
                batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, weight_decay=a.weight_decay,
                max_steps=a.max_steps, max_minutes=a.max_minutes, seed=a.seed, eval_every=a.eval_every,
                val_works=val_works, doc_frac=a.doc_frac, ar_steps=a.ar_steps, run_dir=a.run_dir, resume=a.resume,
                threads=a.threads, save_dtype=a.save_dtype, progress=not a.no_progress,
                sample_prompt=a.sample_prompt.encode().decode('unicode_escape') if a.sample_prompt else None)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
