"""Real-world subject -> object facts of CounterFact's kind, written for this artifact.

They check the ARM side of paper 003 on a real pretrained model (`timerome.smollm2`): each is a
prompt that ends where the object begins, the object the model completes greedily (checked in
notebook 09 before any edit), and a counterfactual new object; new objects of one to several
tokens give the single- vs multi-token comparison. `counterfacts` turns them into
`counterfact.Counterfact` requests, so `edit_eval` scores them exactly as it scores the tiny world's.
Neighbours are the other facts of the same relation; the paraphrase asks the same thing another way.
"""
from __future__ import annotations

from dataclasses import dataclass

from .counterfact import Counterfact
from .data import Fact


@dataclass(frozen=True)
class RealFact:
    relation: str
    prompt: str       # ends right before the object
    subject: str      # as it appears in ``prompt``
    old: str          # the true object
    new: str          # the counterfactual object
    paraphrase: str


FACTS = (
    RealFact("city", "The Eiffel Tower is located in the city of", "The Eiffel Tower", "Paris", "Rome",
             "Where is the Eiffel Tower? It is in the city of"),
    RealFact("city", "The Colosseum is located in the city of", "The Colosseum", "Rome", "London",
             "Where is the Colosseum? It is in the city of"),
    RealFact("city", "The Statue of Liberty is located in the city of", "The Statue of Liberty", "New York", "Kuala Lumpur",
             "Where is the Statue of Liberty? It is in the city of"),
    RealFact("city", "The Louvre is located in the city of", "The Louvre", "Paris", "Buenos Aires",
             "Where is the Louvre? It is in the city of"),
    RealFact("city", "The Sydney Opera House is located in the city of", "The Sydney Opera House", "Sydney",
             "Rio de Janeiro", "Where is the Sydney Opera House? It is in the city of"),
    RealFact("country", "The Great Wall is located in the country of", "The Great Wall", "China", "Mexico",
             "Where is the Great Wall? It is in the country of"),
    RealFact("country", "The Taj Mahal is located in the country of", "The Taj Mahal", "India", "Argentina",
             "Where is the Taj Mahal? It is in the country of"),
    RealFact("country", "Mount Fuji is located in the country of", "Mount Fuji", "Japan", "New Zealand",
             "Where is Mount Fuji? It is in the country of"),
    RealFact("creator", "The Mona Lisa was painted by", "The Mona Lisa", "Leonardo da Vinci", "Vincent van Gogh",
             "Who painted the Mona Lisa? It was painted by"),
    RealFact("creator", "Romeo and Juliet was written by", "Romeo and Juliet", "William Shakespeare",
             "Johann Wolfgang von Goethe", "Who wrote Romeo and Juliet? It was written by"),
    RealFact("creator", "Pride and Prejudice was written by", "Pride and Prejudice", "Jane Austen",
             "Fyodor Dostoevsky", "Who wrote Pride and Prejudice? It was written by"),
    RealFact("creator", "The theory of relativity was developed by", "The theory of relativity", "Albert Einstein",
             "Isaac Newton", "Who developed the theory of relativity? It was developed by"),
    RealFact("capital", "The capital of Japan is", "Japan", "Tokyo", "Buenos Aires",
             "The capital city of Japan is called"),
    RealFact("capital", "The capital of Italy is", "Italy", "Rome", "Tokyo",
             "The capital city of Italy is called"),
    RealFact("capital", "The capital of France is", "France", "Paris", "Sao Paulo",
             "The capital city of France is called"),
)


def counterfacts(facts=FACTS) -> list[Counterfact]:
    """One `Counterfact` per fact (request id ``real:<i>/<relation>``); the backbone's answer prefix
    (a space) separates the prompt and the object."""
    ids = [f"real:{i}/{f.relation}" for i, f in enumerate(facts)]
    out = []
    for i, (rid, f) in enumerate(zip(ids, facts)):
        a = f.prompt.find(f.subject)
        if a < 0:
            raise ValueError(f"real fact {i}: subject {f.subject!r} is not in its prompt {f.prompt!r}")
        if f.old == f.new:
            raise ValueError(f"real fact {i}: the new object equals the old one ({f.old!r})")
        fact = Fact(f.prompt, f.old, "real", i, f.subject, "given", (a, a + len(f.subject)), "question", f.subject)
        nb = tuple(r for r, g in zip(ids, facts) if r != rid and g.relation == f.relation and g.subject != f.subject)
        out.append(Counterfact(rid, f.relation, f.subject, fact, "", "", f.old, f.new, "", f.paraphrase, nb))
    return out
