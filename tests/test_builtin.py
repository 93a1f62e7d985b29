"""The shipped models load through the same loader as real checkpoints and run every strategy."""

from __future__ import annotations

import pytest

from wdiff_cli import generate, load
from wdiff_cli.strategies import STRATEGIES


@pytest.fixture(scope="module", params=["tiny", "tiny-dream"])
def builtin(request):
    return load(request.param, device="cpu")


def test_builtin_checkpoint_format(builtin):
    a = builtin.model.args
    assert a.family == ("dream" if builtin.name == "tiny-dream" else "llada")
    assert a.shift_logits == (a.family == "dream")
    assert builtin.tokenizer.convert_ids_to_tokens(builtin.mask_id) == "<|mask|>"
    assert builtin.tokenizer.convert_ids_to_tokens(builtin.eos_id) == "<|endoftext|>"
    assert sum(p.numel() for p in builtin.model.parameters()) * 4 <= 16 * 2**20


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_builtin_short_generation_each_strategy(builtin, strategy):
    r = generate(builtin, "ROMEO:", strategy=strategy, gen_length=32)
    assert len(r.token_ids[0]) == 32 and builtin.mask_id not in r.token_ids[0]
    assert r.texts[0].strip()
