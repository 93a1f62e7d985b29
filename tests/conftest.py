"""Shared fixtures: the parity checkpoints in ../shared, and tiny random checkpoints written per test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY = SHARED / "parity"
NEEDS_SHARED = pytest.mark.skipif(not PARITY.exists(), reason=f"parity fixtures not found at {PARITY} (../shared beside the repo)")

torch.set_num_threads(1)


def parity_ckpt(name: str) -> Path:
    return PARITY / "checkpoints" / name


def expected(name: str) -> dict:
    return json.loads((PARITY / "expected" / f"{name}.json").read_text())


def write_random_checkpoint(src: Path, dst: Path, seed: int = 0, **overrides) -> Path:
    """Copy a parity checkpoint's config + tokenizer, apply config overrides, write random weights."""
    from safetensors.torch import save_file

    from wdiff_cli.models import build_model

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(overrides)
    (dst / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = build_model(cfg)
    sd = {k: (torch.randn_like(v) * 0.3 if v.ndim > 1 else torch.ones_like(v)) for k, v in model.state_dict().items()}
    save_file(sd, str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="session")
def llada():
    from wdiff_cli.loading import load

    return load(str(parity_ckpt("llada-pub")), device="cpu")


@pytest.fixture(scope="session")
def dream():
    from wdiff_cli.loading import load

    return load(str(parity_ckpt("dream-pub")), device="cpu")
