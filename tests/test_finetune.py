"""LoRA fine-tuning with the masked-diffusion SFT loss (the paper profile's TOFU fine-tune)."""
import torch

from timerome.data import Fact
from timerome.finetune import LoRALinear, add_lora, finetune_lora, merge_lora

from conftest import make_tiny_backbone

FACTS = [Fact(question="who wrote the red book ?", answer="alice wrote the red book in paris .", subject=None,
              subject_rule=None, entity_id=None, split="toy", index=i) for i in range(4)]


def test_lora_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5)
    lora = LoRALinear(lin, r=2, alpha=4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(lora(x), lin(x))  # B = 0 at init
    with torch.no_grad():
        lora.B.normal_()
    y = lora(x)
    torch.testing.assert_close(lora.merged()(x), y, atol=1e-5, rtol=1e-5)


def test_finetune_lora_lowers_the_loss_and_leaves_a_plain_frozen_model(tiny_tokenizer):
    bb = make_tiny_backbone(tiny_tokenizer)
    bb.prompt_template = "question: {question} answer:"
    hist = finetune_lora(bb, FACTS, r=4, epochs=15, batch_size=4, lr=1e-2, log=lambda s: None)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not any(isinstance(m, LoRALinear) for m in bb.model.modules())
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
