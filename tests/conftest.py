import contextlib
import os
from pathlib import Path

import pytest
import torch

from timerome.backbones import Backbone
from timerome.families import FAMILIES
from timerome.tiny.model import TinyConfig, TinyLM
from timerome.tiny.train import train_tokenizer

REPO = Path(__file__).resolve().parents[1]

WORDS = ("alice wrote the red book in paris . bob painted a blue sea near rome . who wrote what ? "
         "question answer carol sings songs about snow").split()


@pytest.fixture(scope="session")
def data_root():
    """The real shared data (TIMEROME_DATA, else ../shared/data beside the checkout)."""
    root = Path(os.environ.get("TIMEROME_DATA", REPO.parent / "shared" / "data"))
    if not (root / "tofu").is_dir():
        pytest.skip(f"real data not found at {root} (set TIMEROME_DATA)")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer():
    texts = [" ".join(WORDS[i:i + 7]) for i in range(len(WORDS))] * 3
    return train_tokenizer(texts, vocab_size=300)


def scale_blocks(bb, factor=3.0):
    """Scale the blocks' matrices: at a random init they barely move the residual stream."""
    with torch.no_grad():
        for p in bb.model.blocks.parameters():
            if p.dim() == 2:
                p.mul_(factor)
    return bb


def make_tiny_backbone(tokenizer, *, block="llama", causal=False, layers=2, d=32, seed=0):
    torch.manual_seed(seed)
    cfg = TinyConfig(vocab_size=len(tokenizer), n_layers=layers, d_model=d, n_heads=2, d_mlp=64,
                     max_len=128, block=block, causal=causal)
    model = TinyLM(cfg).eval()
    family = FAMILIES["tiny-causal" if causal else "tiny"]
    return Backbone(model, tokenizer, family, mask_id=tokenizer.mask_token_id, name=f"random-{block}",
                    prompt_template="question: {question} answer:")


@pytest.fixture
def tiny_backbone(tiny_tokenizer):
    return make_tiny_backbone(tiny_tokenizer)


@contextlib.contextmanager
def record(bb, point):
    """Every forward's output at hook ``point`` while active (a list; `Backbone.trace` keeps the latest only)."""
    outs = []
    with bb.trace(point, edit=lambda _p, h: outs.append(h.detach().clone())):
        yield outs
