"""TimeROMEHParams: typed, validated hyperparameters that round-trip through their file."""
import json

import pytest

from timerome.hparams import TimeROMEHParams


def test_save_load_round_trip(tmp_path):
    hp = TimeROMEHParams("tiny-mdlm", 2, "attn", steps=(3, 1), lam_relative=10.0, alpha=2.0, q=4,
                         provenance={"rule": "Eq. 5", "facts": ["forget10:1"]})
    assert hp.steps == (1, 3)  # sorted, deduplicated
    path = hp.save(tmp_path / "hp.json")
    back = TimeROMEHParams.load(path, tuned=True)
    assert back == hp and back.provenance == hp.provenance
    every = TimeROMEHParams("tiny-mdlm", 0)
    assert json.loads(every.save(tmp_path / "e.json").read_text())["steps"] == -1  # the paper's k* = -1
    assert TimeROMEHParams.load(tmp_path / "e.json").steps is None


def test_frozen_and_replace():
    hp = TimeROMEHParams("b", 1)
    with pytest.raises(AttributeError):
        hp.alpha = 3.0
    assert hp.replace(alpha=3.0).alpha == 3.0 and hp.alpha == 1.0


@pytest.mark.parametrize("kw,field", [
    (dict(layer=-1), "layer"), (dict(layer=True), "layer"), (dict(module="ffn"), "module"),
    (dict(steps=[]), "steps"), (dict(steps=[-2]), "steps"), (dict(lam_relative=0.0), "lam_relative"),
    (dict(lam_relative=float("nan")), "lam_relative"), (dict(alpha=float("inf")), "alpha"),
    (dict(q=-1), "q"), (dict(q=2.0), "q"), (dict(target=""), "target")])
def test_bad_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"TimeROMEHParams.{field}="):
        TimeROMEHParams(**{"backbone": "b", "layer": 0, **kw})


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    f = tmp_path / "hp.json"
    with pytest.raises(FileNotFoundError, match="hp.json"):
        TimeROMEHParams.load(f)
    f.write_text("{not json")
    with pytest.raises(ValueError, match="hp.json: not valid JSON"):
        TimeROMEHParams.load(f)
    f.write_text(json.dumps({"layer": 0}))
    with pytest.raises(ValueError, match="not a timerome-hparams v1 file"):
        TimeROMEHParams.load(f)
    good = {"format": "timerome-hparams", "version": 1, "backbone": "b", "layer": 0}
    f.write_text(json.dumps({**good, "lamda": 3}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lamda'\]"):
        TimeROMEHParams.load(f)
    f.write_text(json.dumps({**good, "q": "4"}))
    with pytest.raises(ValueError, match="hp.json: TimeROMEHParams.q="):
        TimeROMEHParams.load(f)
    f.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="no tuned lambda"):
        TimeROMEHParams.load(f, tuned=True)


def test_build_memory_uses_the_fields(tiny_backbone):
    from timerome.data import Fact

    q = "Who wrote the red book?"
    facts = [Fact(q, "Ann Lee wrote it.", "t", 0, subject="the red book", subject_span=(10, 22), subject_in="question")]
    assert q[10:22] == "the red book"
    hp = TimeROMEHParams(tiny_backbone.name, 1, lam_relative=10.0, alpha=2.0, q=0)
    mem = hp.build_memory(tiny_backbone, facts, alpha=0.5)
    assert (mem.layer, mem.module, mem.alpha, mem.q, mem.lam_relative) == (1, "resid", 0.5, 0, 10.0)
    with pytest.raises(ValueError, match="no tuned lambda"):
        TimeROMEHParams("b", 0).build_memory(tiny_backbone, facts)
