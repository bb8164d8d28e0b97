"""LoRA fine-tuning with the masked-diffusion SFT loss (the paper profile's TOFU fine-tune)."""
import torch

from timerome.data import Fact
from peft.tuners.lora import LoraLayer

from timerome.finetune import add_lora, finetune_lora, lora_targets, merge_lora

from conftest import make_tiny_backbone

FACTS = [Fact(question="who wrote the red book ?", answer="alice wrote the red book in paris .", subject=None,
              subject_rule=None, entity_id=None, split="toy", index=i) for i in range(4)]


def test_lora_starts_as_the_base_model_and_merges_to_the_same_logits(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    ids = torch.randint(5, 50, (2, 9))
    before = bb.logits(ids)
    params = add_lora(bb.model, r=2, alpha=4)
    assert torch.equal(bb.logits(ids), before)  # B = 0 at init: bitwise the base model
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in bb.model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3)
    adapted = bb.logits(ids)
    assert not torch.allclose(adapted, before, atol=1e-3)
    merge_lora(bb.model)
    assert not any(isinstance(m, LoraLayer) for m in bb.model.modules())
    assert all(type(bb.model.get_submodule(n)) is torch.nn.Linear for n in lora_targets(bb.model))
    torch.testing.assert_close(bb.logits(ids), adapted, atol=1e-4, rtol=1e-4)
    for p in ("blocks.0.mlp_in", "blocks.1.attn_out", "blocks.1.resid_post"):
        bb.site(p)  # hook points resolve on the merged model


def test_lora_layers_restrict_the_blocks(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    names = lora_targets(bb.model, ["down"], layers=[0])
    assert names == ["blocks.0.mlp.down"]
    params = add_lora(bb.model, r=2, alpha=2, targets=["down"], layers=[0])
    assert len(params) == 2
    adapted = [n for n, m in bb.model.named_modules() if isinstance(m, LoraLayer)]
    assert adapted == ["blocks.0.mlp.down"]
    try:
        lora_targets(bb.model, ["down"], layers=[99])
    except ValueError as e:
        assert "in blocks [99]" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_finetune_lora_lowers_the_loss_and_leaves_a_plain_frozen_model(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    bb.prompt_template = "question: {question} answer:"
    hist = finetune_lora(bb, FACTS, r=4, epochs=15, batch_size=4, lr=1e-2, log=lambda s: None)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not any(isinstance(m, LoraLayer) for m in bb.model.modules())
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert not bb.model.training


def test_add_lora_targets_must_match(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    try:
        add_lora(bb.model, r=2, alpha=2, targets=("no_such_layer",))
    except ValueError as e:
        assert "no Linear layer matched" in str(e)
    else:
        raise AssertionError("expected ValueError")
    params = add_lora(bb.model, r=2, alpha=2, targets=("qkv",))
    assert len(params) == 2 * bb.n_layers
    merge_lora(bb.model)
