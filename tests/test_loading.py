"""Checkpoint loading: strict names and shapes, sharded safetensors, dtype/device, aliases."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wdiff_cli.loading import ModelLoadError, load, pick_dtype, resolve

from .conftest import NEEDS_SHARED, parity_ckpt, write_random_checkpoint

pytestmark = NEEDS_SHARED


@pytest.mark.parametrize("name,family", [("llada-pub", "llada"), ("llada-pub-gqa", "llada"), ("dream-pub", "dream")])
def test_loads_parity_checkpoints(name, family):
    m = load(str(parity_ckpt(name)), device="cpu")
    assert m.model.args.family == family
    assert m.model.args.shift_logits == (family == "dream")
    assert m.mask_id == json.loads((parity_ckpt(name) / "config.json").read_text())["mask_token_id"]
    assert m.model.dtype == torch.float32


def test_sharded_checkpoint_equals_single(tmp_path):
    src = parity_ckpt("llada-pub")
    dst = write_random_checkpoint(src, tmp_path / "sharded")
    sd = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(dst / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load(str(dst), device="cpu", dtype="bfloat16")
    assert m.model.dtype == torch.bfloat16
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, sd[k].to(torch.bfloat16)), k


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
    dst = write_random_checkpoint(parity_ckpt("dream-pub"), tmp_path / "m")
    sd = load_file(str(dst / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    sd["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor\(s\): model.layers.1.mlp.up_proj.weight.*unexpected 1: model.layers.9.extra.weight"):
        load(str(dst), device="cpu")
    sd = load_file(str(write_random_checkpoint(parity_ckpt("dream-pub"), tmp_path / "s") / "model.safetensors"))
    sd["lm_head.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "s" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"lm_head.weight has shape \(3, 3\)"):
        load(str(tmp_path / "s"), device="cpu")


def test_unsupported_config_is_rejected(tmp_path):
    dst = write_random_checkpoint(parity_ckpt("llada-pub"), tmp_path / "a")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["alibi"] = True
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported LLaDA config: alibi=True"):
        load(str(dst), device="cpu")


def test_dtype_auto_is_fp32_on_cpu_and_aliases():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown model 'nope'"):
        resolve("nope")
