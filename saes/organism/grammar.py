"""The grammar the model organism is trained on: random English-like sentences with agreement.

A small probabilistic context-free grammar over a closed vocabulary. Every present-tense verb
(and was/were) agrees in number with its subject; the subject may be modified by an adjective,
a prepositional phrase ("The kids near the bikes"), an object relative clause ("The athlete that
the chefs like"), a subject relative clause ("The men who help the dog"), or coordinated ("The
boy and the girl", plural). Besides agreement there is tense (present, past, modal), pronouns,
negation with do-support, adverbs, objects, complement clauses ("... knows that the dogs are
here") and clause coordination, so agreement is one regularity among several.

The four agreement constructions of `tasks.sva` are special cases: simple ("The parents" ->
" are"), across_pp, within_rc (the relative-clause verb agrees with the relative-clause subject:
"The athlete that the chefs" -> " have seen"), across_rc. The word lists of `tasks.sva_words`
are part of the lexicon, so `tasks.sva.vocabulary()` is a subset of `words()` (checked on import
of the tokenizer and in tests).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tasks import sva_words as sva

SG, PL = 0, 1
Pair = tuple[str, str]  # (singular, plural)

# ---- lexicon ------------------------------------------------------------------------------------
# People: the subjects and relative-clause subjects of the SVA templates, plus a few more.
PEOPLE: tuple[Pair, ...] = tuple(dict.fromkeys(
    sva.SUBJECT_NOUNS + sva.RC_NOUNS + (
        ("student", "students"), ("nurse", "nurses"), ("pilot", "pilots"),
        ("writer", "writers"), ("painter", "painters"), ("baker", "bakers"),
    )
))  # fmt: skip
# Animals and things: the prepositional objects of the templates, plus a few more.
ANIMALS: tuple[Pair, ...] = tuple(dict.fromkeys(
    tuple(p for p in sva.PP_NOUNS if p[0] in ("cat", "dog"))
    + (("bird", "birds"), ("horse", "horses"), ("cow", "cows"))
))  # fmt: skip
THINGS: tuple[Pair, ...] = tuple(dict.fromkeys(
    tuple(p for p in sva.PP_NOUNS if p[0] not in ("cat", "dog"))
    + (("house", "houses"), ("door", "doors"), ("book", "books"), ("box", "boxes"),
       ("bridge", "bridges"), ("lamp", "lamps"), ("wall", "walls"), ("boat", "boats"))
))  # fmt: skip
PLACES = ("park", "school", "market", "river", "garden", "station", "city", "farm")

PREPOSITIONS = tuple(dict.fromkeys(sva.PREPOSITIONS + ("under", "behind", "with", "from", "by")))
PEOPLE_ADJ = ("old", "young", "tall", "happy", "tired", "busy", "kind", "angry", "quiet", "new")
THING_ADJ = ("old", "new", "small", "big", "red", "blue", "broken", "heavy", "quiet", "green")
ADVERBS_PRE = ("often", "always", "never", "usually", "sometimes", "also")
ADVERBS_POST = ("quickly", "slowly", "well", "again", "today", "now")
LOCATIVES = ("here", "there", "home", "outside", "upstairs")

# Verbs: (3rd singular, plural/base, past, participle, -ing).
BE = ("is", "are")
HAVE = ("has", "have")
DO = ("does", "do")
GO = ("goes", "go")
WAS = ("was", "were")
_TRANSITIVE_FORMS = {  # base -> (past, participle, -ing)
    "like": ("liked", "liked", "liking"), "love": ("loved", "loved", "loving"),
    "hate": ("hated", "hated", "hating"), "know": ("knew", "known", "knowing"),
    "see": ("saw", "seen", "seeing"), "meet": ("met", "met", "meeting"),
    "help": ("helped", "helped", "helping"), "trust": ("trusted", "trusted", "trusting"),
    "follow": ("followed", "followed", "following"), "call": ("called", "called", "calling"),
    "watch": ("watched", "watched", "watching"), "find": ("found", "found", "finding"),
}  # fmt: skip
TRANSITIVE: tuple[tuple[str, str, str, str, str], ...] = tuple(
    (s, p, *_TRANSITIVE_FORMS[p])
    for s, p in dict.fromkeys(sva.RC_VERBS + (
        ("follows", "follow"), ("calls", "call"), ("watches", "watch"), ("finds", "find"),
    ))
)  # fmt: skip
INTRANSITIVE: tuple[tuple[str, str, str], ...] = (  # (3sg, plural, past)
    ("sleeps", "sleep", "slept"), ("runs", "run", "ran"), ("waits", "wait", "waited"),
    ("works", "work", "worked"), ("sings", "sing", "sang"), ("smiles", "smile", "smiled"),
    ("laughs", "laugh", "laughed"), ("walks", "walk", "walked"), ("swims", "swim", "swam"),
)  # fmt: skip
SAYING = (("knows", "know", "knew"), ("says", "say", "said"), ("thinks", "think", "thought"))
MODALS = ("will", "can", "must", "should")
SUBJECT_PRONOUNS = {SG: ("he", "she", "it"), PL: ("they", "we", "you")}
OBJECT_PRONOUNS = ("him", "her", "them", "it", "us", "me")
PERSON_DET = {
    SG: ("the", "the", "the", "a", "my", "his", "her", "their", "every", "this"),
    PL: ("the", "the", "the", "some", "my", "his", "her", "their", "two", "these"),
}
PUNCT = (".", ",")
# Pronouns "we"/"you" take plural verbs ("we are"), as in English.


def _capitalize(word: str) -> str:
    return word[:1].upper() + word[1:]


class Grammar:
    """Samples sentences. ``sentence(rng)`` returns one sentence as a string ending in '.'."""

    def __init__(
        self,
        *,
        p_pp: float = 0.22,
        p_obj_rc: float = 0.18,
        p_subj_rc: float = 0.1,
        p_coord: float = 0.04,
    ):
        self.p_pp, self.p_obj_rc, self.p_subj_rc, self.p_coord = p_pp, p_obj_rc, p_subj_rc, p_coord

    # ---- noun phrases ---------------------------------------------------------------------------
    def noun(self, rng: random.Random, num: int, kind: str) -> str:
        table = {"person": PEOPLE, "animal": ANIMALS, "thing": THINGS}[kind]
        return rng.choice(table)[num]

    def simple_np(self, rng: random.Random, num: int, kind: str | None = None) -> list[str]:
        """Determiner, maybe an adjective, a noun: 'the old dogs'."""
        kind = kind or rng.choices(("person", "animal", "thing"), (0.5, 0.2, 0.3))[0]
        det = rng.choice(PERSON_DET[num]) if rng.random() < 0.35 else "the"
        words = [det]
        if rng.random() < 0.2:
            words.append(rng.choice(PEOPLE_ADJ if kind == "person" else THING_ADJ))
        words.append(self.noun(rng, num, kind))
        return words

    def subject(self, rng: random.Random, num: int) -> tuple[list[str], int]:
        """A subject noun phrase and the number its verb agrees with (coordination: plural)."""
        kind = rng.choices(("person", "animal", "thing"), (0.7, 0.15, 0.15))[0]
        words = self.simple_np(rng, num, kind)
        r = rng.random()
        if r < self.p_pp:  # "the kids near the bikes"
            obj_kind = rng.choices(("person", "animal", "thing"), (0.2, 0.3, 0.5))[0]
            words += [rng.choice(PREPOSITIONS), *self.simple_np(rng, rng.randint(SG, PL), obj_kind)]
        elif (r := r - self.p_pp) < self.p_obj_rc:  # "the athlete that the chefs like"
            words += ["that", *self.relative_object_gap(rng)]
        elif (r := r - self.p_obj_rc) < self.p_subj_rc:  # "the men who help the dog"
            words += [rng.choice(("that", "who") if kind == "person" else ("that",))]
            words += self.verb_phrase(
                rng, num, tense=rng.choice(("present", "present", "past")), allow_clause=False
            )
        elif (r := r - self.p_subj_rc) < self.p_coord:  # "the boy and the girl" -> plural
            words += ["and", *self.simple_np(rng, rng.randint(SG, PL), "person")]
            num = PL
        return words, num

    def relative_object_gap(self, rng: random.Random) -> list[str]:
        """Subject + verb of an object relative clause; its verb agrees with its own subject:
        'the chefs like', 'the chef has seen', 'the chefs are watching', 'the chef does not
        trust', 'the chefs go with'."""
        num = rng.randint(SG, PL)
        words = self.simple_np(rng, num, "person")
        if rng.random() < 0.08:
            words.append(rng.choice(ADVERBS_PRE))
        verb = rng.choice(TRANSITIVE)
        r = rng.random()
        if r < 0.45:
            words.append(verb[num])
        elif r < 0.57:
            words += [BE[num], verb[4]]
        elif r < 0.69:
            words += [HAVE[num], verb[3]]
        elif r < 0.79:
            words += [DO[num], "not", verb[1]]
        elif r < 0.86:
            words += [GO[num], "with"]
        elif r < 0.94:
            words.append(verb[2])  # past: no agreement
        else:
            words += [rng.choice(MODALS), verb[1]]
        return words

    def object(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.15:
            return [rng.choice(OBJECT_PRONOUNS)]
        words = self.simple_np(rng, rng.randint(SG, PL))
        if rng.random() < 0.12:
            words += [rng.choice(PREPOSITIONS), *self.simple_np(rng, rng.randint(SG, PL), "thing")]
        return words

    # ---- verb phrases ---------------------------------------------------------------------------
    def predicate(self, rng: random.Random) -> list[str]:
        """What follows a copula: 'happy', 'not old', 'near the tree', 'home', 'watching him'."""
        r = rng.random()
        if r < 0.35:
            return [rng.choice(PEOPLE_ADJ + THING_ADJ)]
        if r < 0.45:
            return ["not", rng.choice(PEOPLE_ADJ + THING_ADJ)]
        if r < 0.65:
            return [rng.choice(PREPOSITIONS), *self.simple_np(rng, rng.randint(SG, PL), "thing")]
        if r < 0.8:
            return [rng.choice(LOCATIVES)]
        return [rng.choice(TRANSITIVE)[4], *self.object(rng)]

    def base_phrase(self, rng: random.Random, *, allow_be: bool = True) -> list[str]:
        """A base-form verb phrase, after a modal or 'do not': 'be happy', 'like the dog'."""
        r = rng.random()
        if r < 0.2 and allow_be:
            return ["be", *self.predicate(rng)]
        if r < 0.35:
            return ["go", rng.choice(LOCATIVES)]
        if r < 0.75:
            return [rng.choice(TRANSITIVE)[1], *self.object(rng)]
        return [rng.choice(INTRANSITIVE)[1]]

    def verb_phrase(
        self, rng: random.Random, num: int, *, tense: str, allow_clause: bool = True
    ) -> list[str]:
        words: list[str] = []
        if tense != "modal" and rng.random() < 0.12:
            words.append(rng.choice(ADVERBS_PRE))
        if tense == "modal":
            return [rng.choice(MODALS), *self.base_phrase(rng)]
        r = rng.random()
        present = tense == "present"
        if r < 0.24:  # copula
            words += [BE[num] if present else WAS[num], *self.predicate(rng)]
        elif r < 0.36:  # have
            if rng.random() < 0.5:
                words += [HAVE[num] if present else "had", *self.object(rng)]
            else:
                verb: tuple[str, ...] = rng.choice(TRANSITIVE)  # the verb's forms
                words += [HAVE[num] if present else "had", verb[3], *self.object(rng)]
        elif r < 0.48:  # do-support
            words += [DO[num] if present else "did", "not", *self.base_phrase(rng, allow_be=False)]
        elif r < 0.58:  # go
            words.append(GO[num] if present else "went")
            words += rng.choice(
                (
                    [rng.choice(LOCATIVES)],
                    ["to", "the", rng.choice(PLACES)],
                    ["with", *self.simple_np(rng, rng.randint(SG, PL))],
                )
            )
        elif r < 0.82:  # transitive
            verb = rng.choice(TRANSITIVE)
            words += [verb[num] if present else verb[2], *self.object(rng)]
        elif r < 0.94 or not allow_clause:  # intransitive
            verb = rng.choice(INTRANSITIVE)
            words.append(verb[num] if present else verb[2])
            if rng.random() < 0.3:
                words.append(rng.choice(ADVERBS_POST))
        else:  # complement clause
            verb = rng.choice(SAYING)
            words += [verb[num] if present else verb[2], "that", *self.clause(rng, depth=1)]
        return words

    # ---- clauses and sentences ------------------------------------------------------------------
    def clause(self, rng: random.Random, depth: int = 0) -> list[str]:
        num = rng.randint(SG, PL)
        if rng.random() < 0.12:
            subject, agree = [rng.choice(SUBJECT_PRONOUNS[num])], num
        else:
            subject, agree = self.subject(rng, num)
        tense = rng.choices(("present", "past", "modal"), (0.65, 0.23, 0.12))[0]
        return subject + self.verb_phrase(rng, agree, tense=tense, allow_clause=depth == 0)

    def sentence(self, rng: random.Random) -> str:
        words = self.clause(rng)
        if rng.random() < 0.08:
            words += [",", rng.choice(("and", "but")), *self.clause(rng, depth=1)]
        words[0] = _capitalize(words[0])
        return " ".join(words).replace(" ,", ",") + "."

    def sentences(self, n: int, seed: int) -> Iterator[str]:
        rng = random.Random(seed)
        for _ in range(n):
            yield self.sentence(rng)


def words() -> set[str]:
    """Every word the grammar can produce (lower case, plus each sentence-initial capital)."""
    out: set[str] = set()
    for table in (
        PEOPLE,
        ANIMALS,
        THINGS,
        (BE, HAVE, DO, GO, WAS),
        SAYING,
        INTRANSITIVE,
        TRANSITIVE,
    ):
        out |= {form for entry in table for form in entry}
    out |= set(PLACES) | set(PREPOSITIONS) | set(PEOPLE_ADJ) | set(THING_ADJ)
    out |= set(ADVERBS_PRE) | set(ADVERBS_POST) | set(LOCATIVES) | set(MODALS)
    out |= set(OBJECT_PRONOUNS) | {p for ps in SUBJECT_PRONOUNS.values() for p in ps}
    out |= {d for ds in PERSON_DET.values() for d in ds}
    out |= {"that", "who", "not", "to", "be", "had", "did", "went", "and", "but"}
    initial = {d for ds in PERSON_DET.values() for d in ds} | {
        p for ps in SUBJECT_PRONOUNS.values() for p in ps
    }
    out |= {_capitalize(w) for w in initial}
    return out
