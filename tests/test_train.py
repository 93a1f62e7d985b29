"""Training: the masked-diffusion objective, the data rows, and a short run end to end (resume included)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wdiff_cli import train as T

# ---------------------------------------------------------------------------------------------
# objective


def test_forward_process_masks_with_p_and_never_position_zero_for_dream():
    x = torch.randint(0, 50, (4, 4000))
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    noisy, m, p = T.forward_process(x, 99, g, shift=False, t=t)
    assert torch.allclose(p, (1 - T.EPS) * t + T.EPS)
    assert torch.equal(noisy[m], torch.full_like(noisy[m], 99))
    assert torch.equal(noisy[~m], x[~m])
    rate = m.float().mean(-1)
    assert torch.allclose(rate, p, atol=0.03)
    _, m2, _ = T.forward_process(x, 99, g, shift=True, t=torch.ones(4))
    assert not m2[:, 0].any() and m2[:, 1:].all()


def test_stratified_t_covers_the_unit_interval():
    g = torch.Generator().manual_seed(3)
    _, _, p = T.forward_process(torch.zeros(8, 4, dtype=torch.long), 1, g, shift=False)
    t = ((p - T.EPS) / (1 - T.EPS)).sort().values
    gaps = t[1:] - t[:-1]
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-5)


def test_llada_loss_is_sum_of_masked_ce_over_p_divided_by_all_tokens():
    torch.manual_seed(0)
    B, L, V = 3, 7, 11
    logits = torch.randn(B, L, V)
    x = torch.randint(0, V, (B, L))
    m = torch.rand(B, L) < 0.5
    m[0, 0] = True
    p = torch.tensor([0.2, 0.5, 0.9])
    loss, ce, ok = T.diffusion_loss(logits, x, m, p, shift=False)
    want = 0.0
    for b in range(B):
        for i in range(L):
            if m[b, i]:
                want += F.cross_entropy(logits[b, i][None], x[b, i][None]).item() / p[b].item()
    assert loss.item() == pytest.approx(want / (B * L), rel=1e-5)
    assert ce.numel() == ok.numel() == int(m.sum())
    # unmasked positions do not matter
    logits2 = logits.clone()
    logits2[~m] = torch.randn(int((~m).sum()), V) * 100
    assert T.diffusion_loss(logits2, x, m, p, shift=False)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_weight_is_one_over_p():
    logits = torch.zeros(2, 4, 5)  # uniform: every masked CE is log 5
    x = torch.zeros(2, 4, dtype=torch.long)
    m = torch.zeros(2, 4, dtype=torch.bool)
    m[0, 1] = m[1, 2] = True
    p = torch.tensor([0.25, 1.0])
    loss, _, _ = T.diffusion_loss(logits, x, m, p, shift=False)
    assert loss.item() == pytest.approx((4 + 1) * math.log(5) / 8, rel=1e-6)


def test_dream_shift_predicts_token_p_from_logits_at_p_minus_1():
    B, L, V = 2, 6, 9
    x = torch.randint(0, V, (B, L))
    m = torch.ones(B, L, dtype=torch.bool)
    m[:, 0] = False
    p = torch.ones(B)
    shifted = torch.full((B, L, V), -30.0)  # logits at i put all mass on x[i+1]
    for b in range(B):
        for i in range(L - 1):
            shifted[b, i, x[b, i + 1]] = 30.0
    loss, _, ok = T.diffusion_loss(shifted, x, m, p, shift=True)
    assert loss.item() < 1e-6 and bool(ok.all())
    aligned = shifted.roll(1, dims=1)  # the LLaDA alignment: logits at i predict x[i]
    assert T.diffusion_loss(aligned, x, m, p, shift=False)[0].item() < 1e-6
    assert T.diffusion_loss(aligned, x, m, p, shift=True)[0].item() > 1.0
    # normalised by the B * (L - 1) maskable tokens
    uniform = torch.zeros(B, L, V)
    assert T.diffusion_loss(uniform, x, m, p, shift=True)[0].item() == pytest.approx(math.log(V), rel=1e-6)
    assert torch.equal(T.shift_logits(shifted)[:, 1:], shifted[:, :-1])


def test_causal_attend_hides_the_future_and_ar_loss_predicts_the_next_token():
    from wdiff_cli.models import build_model

    cfg = T.model_config("dream", vocab=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64,
                         seq_len=16, eos_id=38, mask_id=39, max_positions=64)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 38, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 38
    a, b = model(x, pos, T.CausalAttend()), model(y, pos, T.CausalAttend())
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    assert not torch.allclose(model(x, pos)[:, :7], model(y, pos)[:, :7])  # the default is bidirectional
    logits = torch.full((1, 4, 5), -30.0)
    tgt = torch.tensor([[1, 2, 3, 4]])
    for i in range(3):
        logits[0, i, tgt[0, i + 1]] = 30.0
    loss, ok = T.ar_loss(logits, tgt)
    assert loss.item() < 1e-6 and ok.shape == (3,) and bool(ok.all())


# ---------------------------------------------------------------------------------------------
# data

WORDS = ("thou thee thy lord king good sweet night love death heart noble fair come go speak hath doth "
         "what why now yet more than this that with my mine and the of to").split()


def _work(rng: random.Random, speeches: int) -> str:
    out = []
    for _ in range(speeches):
        who = rng.choice(["KING", "QUEEN", "FOOL", "FIRST LORD"])
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))).capitalize() + rng.choice(",.;!?")
                 for _ in range(rng.randint(1, 3))]
        out.append(f"{who}.\n" + "\n".join(lines))
    return "\n\n".join(out) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for name in ("alpha", "beta", "gamma", "val_a", "val_b"):
        (root / f"{name}.txt").write_text(_work(rng, 120 if not name.startswith("val") else 40))
    (root / "README.md").write_text("not corpus")
    (root / "METADATA.txt").write_text("[not corpus]\n")
    return root


def test_corpus_skips_metadata_and_holds_out_validation(corpus):
    works = T.read_corpus(corpus)
    assert sorted(works) == ["alpha", "beta", "gamma", "val_a", "val_b"]
    tr, va = T.split_works(works, ["val_a", "val_b.txt"])
    assert sorted(tr) == ["alpha", "beta", "gamma"] and sorted(va) == ["val_a", "val_b"]
    with pytest.raises(ValueError):
        T.split_works(works, ["nope"])


def test_document_rows_are_whole_paragraphs_then_eos_padding(corpus):
    works = T.read_corpus(corpus)
    tok = T.train_tokenizer(list(works.values()), 300)
    eos = tok.token_to_id(T.EOS)
    assert (eos, tok.token_to_id(T.MASK)) == (298, 299)
    s = T.Stream(tok, works, eos)
    rng = np.random.default_rng(0)
    n_docs = 0
    for _ in range(50):
        row = s.document(rng, 128)
        if row is None:
            continue
        n_docs += 1
        n = int(np.argmax(row == eos))
        assert n > 0 and (row[n:] == eos).all()  # EOS then EOS padding to seq_len
        text = tok.decode(row[:n].tolist())
        assert text.split("\n")[0] in ("KING.", "QUEEN.", "FOOL.", "FIRST LORD.")  # starts a speech
        assert not text[-1].isspace()
    assert n_docs > 30
    b = s.batch(rng, 16, 64, doc_frac=0.5)
    assert b.shape == (16, 64)
    assert int(((b == eos).sum(-1) > 0).sum()) >= 2


# ---------------------------------------------------------------------------------------------
# end to end

TINY = dict(d_model=32, n_layers=2, n_heads=2, vocab_size=300, seq_len=32, batch_size=4, lr=3e-3, warmup=10,
            eval_every=2, eval_rows=4, val_works=("val_a", "val_b"), ar_steps=0, progress=False)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_short_run_writes_a_loadable_checkpoint(corpus, tmp_path, family):
    from transformers import AutoTokenizer

    from wdiff_cli.loading import load

    out = tmp_path / "model"
    res = T.train(str(corpus), str(out), family, max_steps=3, run_dir=str(tmp_path / "run"), **TINY)
    assert res["steps"] == 3 and res["tokens"] == 3 * 4 * 32
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "training.json"):
        assert (out / f).exists(), f
    cfg = json.loads((out / "config.json").read_text())
    if family == "llada":
        assert cfg["model_type"] == "llada" and cfg["d_model"] == 32 and cfg["weight_tying"] is False
        assert cfg["n_kv_heads"] == 2 and cfg["embedding_size"] == 320
    else:
        assert cfg["model_type"] == "Dream" and cfg["hidden_size"] == 32 and cfg["tie_word_embeddings"] is False
        assert cfg["num_key_value_heads"] == 1 and cfg["vocab_size"] == 320
    ld = load(str(out), device="cpu")
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token == T.EOS and tok.pad_token == T.EOS and tok.mask_token == T.MASK
    assert ld.mask_id == tok.mask_token_id == cfg["mask_token_id"] == 299
    assert ld.eos_id == tok.eos_token_id == 298
    assert tok("KING.\nGood night")["input_ids"][0] != tok.eos_token_id  # nothing added automatically
    assert ld.model.args.shift_logits == (family == "dream")
    ids = torch.tensor([tok("KING.\nGood night, sweet")["input_ids"]])
    logits = ld.model(ids, torch.arange(ids.shape[1])[None])
    assert logits.shape == (1, ids.shape[1], 320) and torch.isfinite(logits).all()
    ev = T.evaluate(str(out), str(corpus), ratios=(0.5,))
    assert ev["val_works"] == ["val_a", "val_b"] and 0 <= ev["ratios"]["0.5"]["acc"] <= 1
    assert (tmp_path / "run" / "state.pt").exists()
    assert T.sample(ld.model, tok, "KING.\n", gen_length=8, steps=8) is not None


def test_ar_warmup_must_leave_diffusion_steps(corpus, tmp_path):
    with pytest.raises(ValueError, match="no diffusion steps"):
        T.train(str(corpus), str(tmp_path / "m"), "llada", max_steps=3, run_dir=str(tmp_path / "r"),
                **dict(TINY, ar_steps=3))


def test_resume_continues_exactly(corpus, tmp_path):
    kw = dict(TINY, ar_steps=1)  # the resumed part crosses the AR warm-up -> diffusion switch
    full = T.train(str(corpus), str(tmp_path / "a"), "dream", max_steps=4, run_dir=str(tmp_path / "ra"), **kw)
    T.train(str(corpus), str(tmp_path / "b"), "dream", max_steps=2, run_dir=str(tmp_path / "rb"), **kw)
    with pytest.raises(FileExistsError):
        T.train(str(corpus), str(tmp_path / "b"), "dream", max_steps=4, run_dir=str(tmp_path / "rb"), **kw)
    with pytest.raises(ValueError):  # a different recipe cannot continue this run
        T.train(str(corpus), str(tmp_path / "b"), "dream", max_steps=4, run_dir=str(tmp_path / "rb"),
                resume=True, **dict(kw, lr=1e-2))
    res = T.train(str(corpus), str(tmp_path / "b"), "dream", max_steps=4, run_dir=str(tmp_path / "rb"),
                  resume=True, **kw)
    assert res["steps"] == full["steps"] == 4 and res["tokens"] == full["tokens"]
    assert json.loads((tmp_path / "b" / "training.json").read_text())["ar_steps"] == 1
    a = torch.load(tmp_path / "ra" / "state.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "rb" / "state.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
