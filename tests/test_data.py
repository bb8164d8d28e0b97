"""Tests for timerome.data, timerome.subjects and timerome.benchmarks: real-data loads (skipped
if the data root is absent), malformed input, hub-offline errors, and the small WHP/WMDP/verbmem
fixtures."""

import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from timerome import benchmarks as B
from timerome import data as D
from timerome import subjects as S

FIXTURES = Path(__file__).resolve().parent / "fixtures"

TOFU_ROWS = {
    "forget01": 40, "forget05": 200, "forget10": 400,
    "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
    "retain90": 3600, "retain95": 3800, "retain99": 3960, "retain_perturbed": 400,
    "holdout01": 40, "holdout05": 200, "holdout10": 400, "full": 4000,
    "real_authors": 100, "real_authors_perturbed": 100,
    "world_facts": 117, "world_facts_perturbed": 117,
}


def _real_data_dir():
    env = os.environ.get(D.ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir():
    p = _real_data_dir()
    if not (p / "tofu").is_dir():
        pytest.skip(f"real data not found at {p} (set {D.ENV_VAR} to the data root)")
    return p


@pytest.fixture(scope="session")
def tofu(data_dir):
    """Cached load_tofu on the real data (several tests reuse the same splits)."""
    return lru_cache(maxsize=None)(lambda split: D.load_tofu(split, root=data_dir))


@pytest.fixture
def offline_hub(monkeypatch):
    """Make hub calls fail fast. datasets/huggingface_hub read these variables once at
    import, so the already-imported module constants are patched too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _assert_spans(facts):
    for f in facts:
        if f.subject is None:
            assert f.subject_span is None and f.subject_rule is None
            continue
        if f.subject_span is None:  # RWKU: given subject absent from the query
            assert f.subject_rule == "given"
            continue
        text = getattr(f, f.subject_in)
        s, e = f.subject_span
        assert text[s:e] == f.subject, f.fact_id


# ------------------------------------------------------------------------- data root

def test_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    assert D.data_root() is None
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    assert D.data_root() == tmp_path
    assert D.data_root(tmp_path / "x") == tmp_path / "x"  # explicit argument wins


def test_fact_id():
    f = D.Fact(question="q", answer="a", split="forget10", index=7)
    assert f.fact_id == "forget10:7"
    assert f.perturbed_answers == [] and f.extra == {}


# ------------------------------------------------------------------------ TOFU (real)

@pytest.mark.parametrize("split", sorted(TOFU_ROWS))
def test_tofu_split_rows(tofu, split):
    facts = tofu(split)
    assert len(facts) == TOFU_ROWS[split]
    assert [f.index for f in facts] == list(range(len(facts)))
    assert all(f.split == split and f.question and f.answer for f in facts)
    assert len({f.fact_id for f in facts}) == len(facts)


def test_tofu_split_names_cover_the_files(data_dir):
    on_disk = {p.stem for p in (data_dir / "tofu").glob("*.json")}
    assert on_disk == set(D.TOFU_SPLITS) == set(TOFU_ROWS)


def test_tofu_nested_splits(tofu):
    q = {s: [f.question for f in tofu(s)] for s in ("forget01", "forget05", "forget10", "full", "retain90")}
    assert set(q["forget01"]) < set(q["forget05"]) < set(q["forget10"])
    assert q["forget10"] == q["full"][3600:] and q["retain90"] == q["full"][:3600]
    assert not {f.question for f in tofu("holdout10")} & set(q["full"])


def test_tofu_perturbed_fields(tofu):
    for f in tofu("forget10_perturbed") + tofu("retain_perturbed"):
        assert isinstance(f.paraphrased_answer, str) and isinstance(f.paraphrased_question, str)
        assert len(f.perturbed_answers) == 5
    for f in tofu("world_facts_perturbed") + tofu("real_authors_perturbed"):
        assert f.paraphrased_answer is None and f.paraphrased_question is None  # metrics use the answer
        assert len(f.perturbed_answers) == 3
    plain = tofu("forget10")[0]
    assert plain.perturbed_answers == [] and plain.paraphrased_answer is None
    assert [f.question for f in tofu("forget10")] == [f.question for f in tofu("forget10_perturbed")]
    assert len(tofu("real_authors")[0].extra["options"]) == 4


def test_tofu_author_ids(tofu):
    ids = {s: [f.entity_id for f in tofu(s)] for s in ("forget01", "forget05", "forget10", "full")}
    assert len(set(ids["forget01"])) == 2 and len(set(ids["forget05"])) == 10
    assert len(set(ids["forget10"])) == 20 and len(set(ids["full"])) == 200
    assert ids["forget10"][0] == "tofu_author_180" and ids["full"][-1] == "tofu_author_199"
    by_q = {f.question + f.answer: f.entity_id for f in tofu("full")}
    for s in ("forget01", "forget10", "forget01_perturbed", "retain_perturbed"):
        assert all(by_q[f.question + f.answer] == f.entity_id for f in tofu(s)), s
    # 20 consecutive facts per author
    assert all(ids["full"].count(a) == 20 for a in set(ids["full"]))
    hold = [f.entity_id for f in tofu("holdout10")]
    assert len(set(hold)) == 20 and not set(hold) & set(ids["full"])
    assert [f.entity_id for f in tofu("holdout01")] == hold[:40]
    assert tofu("world_facts")[5].entity_id == "world_facts:5"
    assert tofu("real_authors_perturbed")[3].entity_id == "real_authors:3"


def test_tofu_author_ids_by_row_order_match_lookup(tofu, data_dir, monkeypatch):
    # without the data root there is no full.json to look questions up in
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    for split in ("forget01", "forget10_perturbed", "retain_perturbed"):
        alone = D.load_tofu(split, path=data_dir / "tofu" / f"{split}.json")
        assert [f.entity_id for f in alone] == [f.entity_id for f in tofu(split)], split


def test_tofu_author_names(tofu):
    assert {f.extra["author_name"] for f in tofu("forget01")} == {"Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"}
    names = {f.extra["author_name"] for f in tofu("full")}
    for n in ("Jaime Vasquez", "Hsiao Yun-Hwa", "Isabella van Pletzen", "Patrick Ryan O'Donnell",
              "Alejandro (Alex) Fuentes", "Femke Van der Veen", "Jamie-li Thandeka Wainwright"):
        assert n in names
    assert None in names  # the one nameless author ("the fictitious author")


def test_tofu_subjects(tofu):
    f0 = tofu("forget10")[0]  # "What is the full name of the author born in Taipei ...?"
    assert (f0.subject, f0.subject_rule, f0.subject_in) == ("Hsiao Yun-Hwa", "answer_full_name", "answer")
    f1 = tofu("forget10")[1]
    assert (f1.subject, f1.subject_rule, f1.subject_span) == ("Hsiao Yun-Hwa", "question_full_name", (10, 23))
    for s in ("forget10", "retain_perturbed", "full", "holdout10", "real_authors", "world_facts",
              "world_facts_perturbed"):
        _assert_spans(tofu(s))
    assert tofu("real_authors")[0].subject == "Romeo and Juliet"
    assert tofu("world_facts")[1].subject == "Land of the Rising Sun"


def test_tofu_subject_rule_report(tofu):
    reports = {s: D.subject_rule_report(tofu(s)) for s in
               ("forget10", "retain_perturbed", "full", "holdout10", "real_authors", "world_facts")}
    for s, r in reports.items():
        print(s, r)
    for s in ("forget10", "retain_perturbed", "full", "holdout10"):
        r, n = reports[s], TOFU_ROWS[s]
        assert sum(r.values()) == n and "none" not in r  # every author fact located
        assert r["question_full_name"] >= 0.9 * n
        assert r["question_full_name"] + r["answer_full_name"] + r.get("question_partial_name", 0) >= 0.99 * n
    assert reports["forget10"]["answer_full_name"] <= 40
    assert reports["real_authors"] == {"question_entity": 100}
    assert reports["world_facts"]["question_entity"] >= 90


# ---------------------------------------------------------- TOFU (fixtures, errors)

def test_malformed_json_line(tmp_path):
    p = tmp_path / "forget01.json"
    p.write_text('{"question": "Q?", "answer": "A."}\n{"question": "Q2?", "answer": \n')
    with pytest.raises(D.DataError, match=r"forget01\.json: line 2: invalid JSON"):
        D.load_tofu("forget01", path=p)


def test_malformed_json_array(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n {"question": "Q?", "answer": "A."},\n {"question": }\n]\n')
    with pytest.raises(D.DataError, match=r"a\.json: line 3: invalid JSON"):
        D.read_records(p)


def test_not_an_object_and_empty(tmp_path):
    p = tmp_path / "forget01.json"
    p.write_text('{"question": "Q?", "answer": "A."}\n42\n')
    with pytest.raises(D.DataError, match=r"line 2: expected a JSON object, got int"):
        D.load_tofu("forget01", path=p)
    p.write_text("\n\n")
    with pytest.raises(D.DataError, match="no records"):
        D.load_tofu("forget01", path=p)


def test_missing_field(tmp_path):
    p = _jsonl(tmp_path / "forget01.json", [{"question": "Who is Ada Quill?", "answer": "A."},
                                             {"question": "Where was Ada Quill born?"}])
    with pytest.raises(D.DataError) as e:
        D.load_tofu("forget01", path=p)
    msg = str(e.value)
    assert str(p) in msg and "line 2" in msg and "missing field 'answer'" in msg


def test_wrong_type(tmp_path):
    row = {"question": "Who is Ada Quill?", "answer": "Ada Quill is a poet.", "paraphrased_answer": "p",
           "perturbed_answer": "not a list", "paraphrased_question": "pq"}
    p = _jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(D.DataError, match=r"x\.jsonl: line 1: field 'perturbed_answer' must be a list of non-empty strings"):
        D.load_tofu("forget01_perturbed", path=p)
    p = _jsonl(tmp_path / "y.jsonl", [{"question": 3, "answer": "a"}])
    with pytest.raises(D.DataError, match=r"field 'question' must be a string, got int"):
        D.load_tofu("forget01", path=p)


def test_unknown_split():
    with pytest.raises(ValueError, match=r"unknown TOFU split 'forget20'.*forget10"):
        D.load_tofu("forget20")


def _invented_author(tmp_path):
    rows = [{"question": "Where was Ada Quill born?", "answer": "Ada Quill was born in Tallin."},
            {"question": "What does Ada Quill write?", "answer": "Ada Quill writes sea poems."},
            {"question": "What year was it?", "answer": "It was 1990."}]
    return _jsonl(tmp_path / "forget01.json", rows)


def test_missing_subject_policy(tmp_path):
    p = _invented_author(tmp_path)
    with pytest.raises(D.SubjectNotFound, match=r"forget01:2 \(question 'What year was it\?'\)"):
        D.load_tofu("forget01", path=p)
    assert [f.index for f in D.load_tofu("forget01", path=p, on_missing_subject="skip")] == [0, 1]
    kept = D.load_tofu("forget01", path=p, on_missing_subject="keep")
    assert [f.subject for f in kept] == ["Ada Quill", "Ada Quill", None]
    assert kept[0].entity_id == "tofu_author_198"  # row order from forget01's offset
    with pytest.raises(ValueError, match="on_missing_subject"):
        D.load_tofu("forget01", path=p, on_missing_subject="ignore")


def test_subject_rule_branches():
    loc = S.locate_author_subject
    assert loc("Is Jamie Vasquez's work good?", "Yes.", "Jaime Vasquez")[:2] == ("Vasquez", "question_partial_name")
    assert loc('What is "Salt Lines" about?', "A poem.", "Ada Quill")[:2] == ("Salt Lines", "question_title")
    assert loc("What did the fictitious author study?", "Law.", None)[:2] == ("the fictitious author",
                                                                               "question_author_ref")
    assert loc("What was his first book?", "Tides.", None)[:2] == ("his", "question_pronoun")
    assert S.locate_entity_subject("Who wrote 'Long Day's Journey Into Night'?")[0] == "Long Day's Journey Into Night"
    assert S.locate_entity_subject("In which city was John F. Kennedy assassinated?")[0] == "John F. Kennedy"
    assert S.locate_entity_subject("Which river is the longest in the world?") is None
    assert S.recover_author_name([("Who is Ana O'Neil?", "Ana O'Neil's books."), ("Hi?", "Ana O'Neil")]) == "Ana O'Neil"


# ------------------------------------------------------------------- missing data

def test_tofu_not_found_offline(tmp_path, monkeypatch, offline_hub):
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    with pytest.raises(D.DataNotFound) as e:
        D.load_tofu("forget10")
    msg = str(e.value)
    assert D.ENV_VAR in msg and str(tmp_path / "tofu" / "forget10.json") in msg and "locuslab/TOFU" in msg
    monkeypatch.delenv(D.ENV_VAR)
    with pytest.raises(D.DataNotFound, match=r"TIMEROME_DATA is not set; expected \$TIMEROME_DATA/tofu/forget10\.json"):
        D.load_tofu("forget10")


class _FakeDatasets:
    """Stands in for the `datasets` module: counts calls, raises what it is given (no network)."""
    def __init__(self, error):
        self.calls, self.error = 0, error

    def load_dataset(self, *args, **kwargs):
        self.calls += 1
        raise self.error


def _online(monkeypatch, error):
    fake = _FakeDatasets(error)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(D, "_HUB_UNREACHABLE", None)
    return fake


def test_hub_fallback_is_not_tried_when_offline(tmp_path, monkeypatch):
    fake = _online(monkeypatch, RuntimeError("must not be called"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(D.DataNotFound, match=r"locuslab/TOFU.*was not tried \(HF_HUB_OFFLINE=1 is set\)"):
        D.load_tofu("forget10", root=tmp_path)
    assert fake.calls == 0


def test_hub_fallback_fails_fast_after_a_refused_connection(tmp_path, monkeypatch):
    refused = OSError("hub unreachable")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    fake = _online(monkeypatch, refused)
    with pytest.raises(D.DataNotFound, match="hub unreachable"):
        D.load_tofu("forget10", root=tmp_path)
    with pytest.raises(D.DataNotFound, match="cais/wmdp.*not tried.*could not connect"):
        B.load_wmdp("wmdp-bio", root=tmp_path)
    assert fake.calls == 1
    fake = _online(monkeypatch, ValueError("no such config"))  # not a connection problem: keep trying
    for _ in range(2):
        with pytest.raises(D.DataNotFound, match="no such config"):
            D.load_tofu("forget10", root=tmp_path)
    assert fake.calls == 2


@pytest.mark.parametrize("loader, rows, field", [
    ("tofu", [{"question": "Who is Ada Quill?", "answer": "A poet."}, {"question": "Q?", "answer": ""}], "answer"),
    ("tofu", [{"question": "Who is Ada Quill?", "answer": "  \n"}], "answer"),
    ("perturbed", [{"question": "Q?", "answer": "a", "paraphrased_answer": "p", "paraphrased_question": "pq",
                    "perturbed_answer": ["x", ""]}], "perturbed_answer"),
    ("trivia", [{"question": "Q?", "true_answer": "", "false_answer": "b"}], "true_answer"),
    ("wmdp", [{"question": "Q?", "choices": ["", "b"], "answer": 0}], "choices"),
])
def test_empty_answer_is_rejected(tmp_path, loader, rows, field):
    p = _jsonl(tmp_path / "x.jsonl", rows)
    load = {"tofu": lambda: D.load_tofu("forget01", path=p),
            "perturbed": lambda: D.load_tofu("forget01_perturbed", path=p),
            "trivia": lambda: B.load_whp_trivia(path=p), "wmdp": lambda: B.load_wmdp(path=p)}[loader]
    with pytest.raises(D.DataError, match=rf"x\.jsonl: line {len(rows)}: field '{field}'.*non-empty string"):
        load()


def test_explicit_path_missing(tmp_path):
    with pytest.raises(D.DataNotFound, match="no such file"):
        D.load_tofu("forget10", path=tmp_path / "nope.json")


def test_local_only_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    with pytest.raises(D.DataNotFound, match=D.ENV_VAR):
        B.load_rwku()
    with pytest.raises(D.DataNotFound, match=r"TIMEROME_DATA.*muse/news/knowmem/forget_qa\.json"):
        B.load_muse_knowmem("news", "forget_qa")
    with pytest.raises(D.DataNotFound, match=str(tmp_path / "whp" / "evaluation_prompts.json")):
        B.load_whp(root=tmp_path)


def test_wmdp_and_verbmem_not_found_offline(tmp_path, offline_hub):
    with pytest.raises(D.DataNotFound) as e:
        B.load_wmdp("wmdp-bio", root=tmp_path)
    msg = str(e.value)
    assert D.ENV_VAR in msg and str(tmp_path / "wmdp" / "wmdp-bio.jsonl") in msg and "cais/wmdp" in msg
    with pytest.raises(D.DataNotFound) as e:
        B.load_muse_verbmem("books", root=tmp_path)
    msg = str(e.value)
    assert D.ENV_VAR in msg and str(tmp_path / "muse" / "books" / "verbmem" / "forget.json") in msg
    assert "muse-bench/MUSE-Books" in msg


# ------------------------------------------------------------------- RWKU, MUSE

def test_rwku(data_dir):
    targets = B.rwku_targets(data_dir)
    assert len(targets) == 100 and targets[0] == "1_Stephen_King" and targets[-1] == "100_Matthew_Perry"
    facts = B.load_rwku("1_Stephen_King", root=data_dir)
    assert facts and all(f.subject == "Stephen King" and f.subject_rule == "given" for f in facts)
    assert all(f.entity_id == "1_Stephen_King" and f.extra["type"] == "cloze" for f in facts)
    nb = B.load_rwku("1_Stephen_King", "neighbor_level1", root=data_dir)
    assert nb[0].subject == "The Shawshank Redemption" and nb[0].extra["target_subject"] == "Stephen King"
    assert nb[0].subject_span == (0, 24)
    every = B.load_rwku(level="forget_level1", root=data_dir)
    assert len(every) == 1637 and every[0].entity_id == "1_Stephen_King"
    assert every[-1].entity_id == "100_Matthew_Perry"
    _assert_spans(every + nb)
    with pytest.raises(ValueError, match="unknown RWKU target"):
        B.load_rwku("Stephen King", root=data_dir)
    with pytest.raises(ValueError, match="unknown RWKU level"):
        B.load_rwku(level="forget_level4", root=data_dir)


@pytest.mark.parametrize("corpus", ["news", "books"])
def test_muse_knowmem(data_dir, corpus):
    sizes = {"forget_qa": 100, "retain_qa": 100, "forget_qa_icl": 10, "retain_qa_icl": 10}
    for split, n in sizes.items():
        facts = B.load_muse_knowmem(corpus, split, root=data_dir)
        assert len(facts) == n and facts[0].split == f"muse/{corpus}/knowmem/{split}"
        _assert_spans(facts)
    report = D.subject_rule_report(B.load_muse_knowmem(corpus, "forget_qa", root=data_dir))
    print(corpus, report)
    assert report["question_entity"] >= 85
    with pytest.raises(D.SubjectNotFound):
        B.load_muse_knowmem(corpus, "forget_qa", root=data_dir, on_missing_subject="raise")
    with pytest.raises(ValueError, match="unknown MUSE knowmem split"):
        B.load_muse_knowmem(corpus, "forget", root=data_dir)


def test_muse_bad_corpus():
    with pytest.raises(ValueError, match="unknown MUSE corpus"):
        B.load_muse_knowmem("poems", "forget_qa")


# --------------------------------------------------------- WHP, WMDP, verbmem (fixtures)

def test_whp_prompts(tmp_path):
    facts = B.load_whp(path=FIXTURES / "whp_evaluation_prompts.json")
    assert len(facts) == 3
    f = facts[0]
    assert f.question.startswith("Orla Finch raised") and f.answer == "Orla Finch"
    assert f.extra == {"references": ["Orla Finch", "brass lantern"], "subtlety": 6}
    assert f.subject == "Orla Finch" and facts[2].subject is None
    _assert_spans(facts)
    # the same rows as JSON Lines, found under the data root
    rows = json.loads((FIXTURES / "whp_evaluation_prompts.json").read_text())
    (tmp_path / "whp").mkdir()
    _jsonl(tmp_path / "whp" / "evaluation_prompts.json", rows)
    assert B.load_whp(root=tmp_path) == facts
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": {"references": [], "prompt": "p", "subtlety": 1}}])
    with pytest.raises(D.DataError, match=r"line 1: field 'prompt.references' must not be empty"):
        B.load_whp(path=bad)
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": {"references": ["r"], "prompt": "p", "subtlety": "high"}}])
    with pytest.raises(D.DataError, match=r"field 'prompt.subtlety' must be an integer"):
        B.load_whp(path=bad)


def test_whp_trivia():
    facts = B.load_whp_trivia(path=FIXTURES / "whp_trivia.jsonl")
    assert [f.answer for f in facts] == ["Gull Point", "Tide Reading", "green"]
    assert facts[0].perturbed_answers == ["Harbour Tower"] and facts[0].subject == "Orla Finch"
    assert facts[2].subject is None


def test_wmdp(tmp_path):
    facts = B.load_wmdp("wmdp-bio", path=FIXTURES / "wmdp_bio.jsonl")
    assert [f.answer for f in facts] == ["Mitochondrion", "DNA fragments", "tRNA"]
    assert facts[1].extra["answer_index"] == 2 and len(facts[1].extra["choices"]) == 4
    assert facts[1].perturbed_answers == ["Amino acids", "Fatty acids", "Sugars"]
    assert facts[0].split == "wmdp/wmdp-bio" and facts[1].subject == "DNA"
    (tmp_path / "wmdp").mkdir()
    (tmp_path / "wmdp" / "wmdp-bio.jsonl").write_bytes((FIXTURES / "wmdp_bio.jsonl").read_bytes())
    assert B.load_wmdp(root=tmp_path) == facts
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(D.DataError, match=r"line 1: field 'answer' = 2 is not an index"):
        B.load_wmdp(path=bad)
    with pytest.raises(ValueError, match="unknown WMDP config"):
        B.load_wmdp("wmdp-physics")


def test_muse_verbmem(tmp_path):
    facts = B.load_muse_verbmem("news", path=FIXTURES / "muse_verbmem_forget.json")
    assert len(facts) == 2 and facts[1].answer.startswith("the sea would be early")
    assert facts[0].split == "muse/news/verbmem/forget" and facts[0].subject is None
    d = tmp_path / "muse" / "news" / "verbmem"
    d.mkdir(parents=True)
    (d / "forget.json").write_bytes((FIXTURES / "muse_verbmem_forget.json").read_bytes())
    assert B.load_muse_verbmem("news", root=tmp_path) == facts
