"""Author-disjoint TOFU splits (`timerome.splits`): the rule, the real retain/forget files, errors."""
import pytest

import timerome.data as D
from timerome import splits as S
from timerome.data import Fact

AUTHORS = [f"tofu_author_{i:03d}" for i in range(20)]


# ================================================================================ the rule
def test_split_is_disjoint_covers_all_and_is_sorted():
    s = S.split_authors(AUTHORS, n_validation=4, seed=0)
    assert len(s.validation) == 4 and len(s.test) == 16
    assert set(s.validation).isdisjoint(s.test)
    assert set(s.validation) | set(s.test) == set(AUTHORS)
    assert list(s.validation) == sorted(s.validation) and list(s.test) == sorted(s.test)


def test_split_depends_on_seed_and_ids_only():
    a = S.split_authors(AUTHORS, seed=0)
    assert S.split_authors(list(reversed(AUTHORS)), seed=0) == a  # not on the order of the input
    assert S.split_authors(AUTHORS + AUTHORS[:3], seed=0) == a  # nor on repeats
    assert S.split_authors(AUTHORS, seed=1) != a
    assert S.split_authors(AUTHORS, seed=1) == S.split_authors(AUTHORS, seed=1)


def test_split_rule_is_the_documented_hash_rank():
    ranked = sorted(AUTHORS, key=lambda a: S._rank(7, a))
    assert S.split_authors(AUTHORS, n_validation=3, seed=7).validation == tuple(sorted(ranked[:3]))


@pytest.mark.parametrize("n", [0, 20, -1, 2.0, True])
def test_split_rejects_an_empty_part(n):
    with pytest.raises(ValueError, match="n_validation"):
        S.split_authors(AUTHORS, n_validation=n)


def test_part_names_are_checked():
    with pytest.raises(ValueError, match="unknown retain part 'train'"):
        S.split_authors(AUTHORS).part("train")


# ============================================================================ on the real data
def test_retain_split_of_tofu(data_root):
    s = S.retain_author_split(data_root)
    assert s == S.retain_author_split(data_root)
    assert s == S.split_authors(AUTHORS)  # retain_perturbed has authors 000-019
    val, test = S.retain_facts("validation", data_root), S.retain_facts("test", data_root)
    assert len(val) == 80 and len(test) == 320
    assert {f.entity_id for f in val} == set(s.validation) and {f.entity_id for f in test} == set(s.test)
    first = test[:len(s.test)]  # round-robin: the first |test authors| facts are one per author, by id
    assert [f.entity_id for f in first] == list(s.test)
    for j, a in enumerate(s.test):  # the j-th author's facts: file order rotated by j
        mine = [f.index for f in test if f.entity_id == a]
        order = sorted(mine)
        assert mine == order[j:] + order[:j]
    assert len({f.index % 20 for f in test[:40]}) >= 16  # 40 facts: many authors and many question positions
    assert S.retain_facts("test", data_root, max_examples=5) == test[:5]


def test_validation_forget_facts_span_authors_outside_forget01(data_root):
    facts = S.validation_forget_facts(20, data_root)
    forget01 = {f.entity_id for f in D.load_tofu("forget01", data_root)}
    authors = [f.entity_id for f in facts]
    assert len(facts) == 20 and len({f.fact_id for f in facts}) == 20
    assert len(set(authors)) == 8 and not set(authors) & forget01  # forget05 has 10 authors, 2 are forget01's
    assert authors[:8] == sorted(set(authors))  # round-robin: one fact of each author first
    assert all(f.subject_in == "question" for f in facts)
    assert S.validation_forget_facts(20, data_root) == facts


def test_validation_forget_facts_impossible_requests(data_root):
    with pytest.raises(ValueError, match="cannot span min_authors=4"):
        S.validation_forget_facts(3, data_root)
    with pytest.raises(ValueError, match="min_authors=9"):
        S.validation_forget_facts(20, data_root, min_authors=9)
    with pytest.raises(ValueError, match="only 152 facts"):  # 8 authors x 20, less 8 subject-in-answer facts
        S.validation_forget_facts(500, data_root)
    with pytest.raises(ValueError, match="both 'forget01'"):
        S.validation_forget_facts(20, data_root, split="forget01")


def test_facts_without_authors_cannot_be_split(monkeypatch):
    monkeypatch.setattr(D, "load_tofu", lambda split, root=None, **kw: [Fact("q ?", "a", split, 0)])
    with pytest.raises(ValueError, match="no entity_id"):
        S.retain_author_split()
