"""`python -m timerome.smoke`: passes on a committed backbone, fails with a clear message otherwise."""
import pytest
import torch

from timerome import smoke


def test_smoke_passes_on_a_shifted_tiny_backbone(capsys):
    assert smoke.main(["tiny-dream", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "bitwise restored" in out and "smoke check passed for tiny-dream" in out


def test_missing_weights_fail_with_one_line_naming_the_model(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert smoke.main(["no-such-org/no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "smoke check FAILED for no-such-org/no-such-model: load:" in err and "Traceback" not in err


def test_an_edit_that_changes_nothing_is_a_failure(monkeypatch):
    from timerome import memory

    @__import__("contextlib").contextmanager
    def inert(self, bb, **kw):
        yield self

    monkeypatch.setattr(memory.EditMemory, "installed", inert)
    with pytest.raises(smoke.SmokeFailure, match="left the logits unchanged"):
        smoke.smoke("tiny-mdlm", steps=2, log=lambda s: None)


def test_digest_sees_one_changed_weight():
    m = torch.nn.Linear(3, 2)
    d = smoke._digest(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert smoke._digest(m) != d
