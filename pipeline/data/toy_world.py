"""The toy world: a seeded, offline data generator with a programmatic gold reward.

Every stage of the pipeline (pretrain -> SFT -> reward model -> PPO/DPO, and
weak-to-strong) needs data, and every stage's improvement should be measured
against the *truth* rather than against a learned proxy. The toy world gives
both from one seed, with no network and no external dependencies:

* a pretraining corpus mixing good answers with realistic bad ones (wrong
  answers, rambling endings), so that a model imitating it has clear room to
  improve;
* SFT demonstrations (good answers; optionally a share of labeller mistakes);
* preference pairs (chosen beats rejected under the gold reward);
* weak-to-strong binary tasks ("is this answer right?");
* :func:`gold_reward`, which scores any response text for any toy-world prompt.

Text format (other modules rely on it)
--------------------------------------
A dialogue is one turn. ``prompt = "User: {question}\\nBot:"`` and
``response = " {answer}"`` (note the leading space); a document is
``prompt + response``. Documents carry no end marker: the tokenizer's EOS is
appended when packing, and the model learns to end its response with EOS.
Everything stays inside the small character set :data:`CHARSET` (lowercase
letters, digits, space, newline, ``U``/``B`` for "User"/"Bot" and ``?:+.,``),
which is why questions are written in lowercase.

Skills (:data:`SKILLS`)
-----------------------
* ``add``      ``"what is 17 + 5?"``          -> ``"22"`` (operands have 1..max_digits digits)
* ``copy``     ``"repeat the word: apple"``    -> ``"apple"``
* ``reverse``  ``"reverse the word: apple"``   -> ``"elppa"``
* ``colour``   ``"what colour is a banana?"``  -> ``"yellow"`` (fixed table, :data:`COLOURS`)

Words come from the embedded list :data:`WORDS` (60 words of 3..7 letters);
``max_word_len`` caps their length, and values above 7 also allow two-word
compounds (``"catrabbit"``) so the word skills can be made harder.

Gold reward
-----------
For a response ``r`` to a prompt whose answer is ``a``, let ``s = r.strip()``
and ``head`` = the first whitespace-separated token of ``s`` with trailing
``'.'``/``','`` removed. Then::

    correct = 1.0 if head == a else 0.0
    extra   = len(s) - len(head)            # characters besides the answer token
    clean   = max(0, 1 - extra / 30)  if finished else 0.0
    gold    = 0.7 * correct + 0.3 * clean   # in [0, 1]

and ``gold = 0`` for an empty (all-whitespace) response, so that "say
nothing" is never rewarded for being brief. So: right and clean = 1.0; wrong
but clean = 0.3; right but rambling lies in [0.7, 1); a response cut off by the
length limit (``finished=False``) keeps only the correctness part.

Splits
------
``train``/``eval``/``test`` draw from different derived random streams.
Guarantee: **addition problems are disjoint across splits** -- every unordered
operand pair ``{a, b}`` belongs to exactly one split (a fixed hash of the pair,
independent of seed and knobs; about 80/10/10), so no eval/test addition (in
either operand order) ever appears in any train split. The word and colour
skills have small finite domains and are *not* held out: their eval/test
prompts overlap train prompts (they measure skill, not novelty).
"""

from __future__ import annotations

import random
import re
import string
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = [
    "CHARSET",
    "COLOURS",
    "SKILLS",
    "SPLITS",
    "WORDS",
    "Task",
    "check_toy_keys",
    "toy_skills_field",
    "ToyWorld",
    "gold_reward",
    "gold_reward_batch",
    "parse_prompt",
    "split_document",
]

# --------------------------------------------------------------------------
# Fixed vocabulary of the world
# --------------------------------------------------------------------------

SKILLS: tuple[str, ...] = ("add", "copy", "reverse", "colour")
SPLITS: tuple[str, ...] = ("train", "eval", "test")

#: Every character any toy-world text (prompt, good or bad response) may contain.
CHARSET: str = "".join(sorted(set(string.ascii_lowercase + string.digits + " \n?:+.,UB")))

#: 60 short common words, 12 of each length 3..7 (no palindromes, so copy != reverse).
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "hat", "cup", "box", "pen", "map", "bus", "egg", "fox", "owl",
    "book", "fish", "moon", "tree", "bird", "cake", "door", "milk", "rain", "ship", "star", "wolf",
    "apple", "house", "river", "stone", "cloud", "bread", "chair", "table", "water", "music",
    "tiger", "horse",
    "garden", "window", "pencil", "rocket", "planet", "forest", "castle", "bridge", "candle",
    "basket", "button", "rabbit",
    "kitchen", "blanket", "picture", "monster", "teacher", "chicken", "morning", "rainbow",
    "dolphin", "penguin", "balloon", "giraffe",
)

#: Object -> colour. Several colours have two objects so the table is not a bijection.
COLOURS: dict[str, str] = {
    "banana": "yellow",
    "lemon": "yellow",
    "tomato": "red",
    "cherry": "red",
    "carrot": "orange",
    "pumpkin": "orange",
    "frog": "green",
    "lime": "green",
    "crow": "black",
    "swan": "white",
    "snowman": "white",
    "elephant": "grey",
    "plum": "purple",
    "pig": "pink",
    "blueberry": "blue",
    "potato": "brown",
}
_PALETTE: tuple[str, ...] = tuple(sorted(set(COLOURS.values())))
_OBJECTS: tuple[str, ...] = tuple(COLOURS)

#: Clauses used to make rambling endings: " 22, i think. or maybe not, who knows really."
_FILLERS: tuple[str, ...] = (
    "i think",
    "i guess",
    "probably",
    "more or less",
    "or maybe not",
    "who knows really",
    "but i am not sure",
    "that is my best guess",
    "let me check again",
    "if i remember right",
)

# Gold reward constants (see module docstring).
_W_CORRECT = 0.7
_W_CLEAN = 0.3
_EXTRA_CHARS_TO_ZERO = 30.0

# Share of unordered addition operand pairs held out for eval and test (each).
_HELD_OUT_BUCKETS = 10  # pair hash % 10: 0 -> eval, 1 -> test, 2..9 -> train


# --------------------------------------------------------------------------
# Tasks, prompts and parsing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One question with its single correct answer."""

    skill: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """The model input: ``"User: {question}\\nBot:"``."""
        return f"User: {self.question}\nBot:"

    def document(self, response: Optional[str] = None) -> str:
        """Prompt plus response (the good response ``" {answer}"`` by default)."""
        return self.prompt + (f" {self.answer}" if response is None else response)


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _add_task(a: int, b: int) -> Task:
    return Task("add", f"what is {a} + {b}?", str(a + b))


def _copy_task(word: str) -> Task:
    return Task("copy", f"repeat the word: {word}", word)


def _reverse_task(word: str) -> Task:
    return Task("reverse", f"reverse the word: {word}", word[::-1])


def _colour_task(obj: str) -> Task:
    if obj not in COLOURS:
        raise ValueError(f"unknown object {obj!r} in colour question; known: {', '.join(COLOURS)}")
    return Task("colour", f"what colour is {_article(obj)} {obj}?", COLOURS[obj])


_PROMPT_RE = re.compile(r"User: (?P<q>[^\n]*)\nBot:")
_NUM = r"(0|[1-9][0-9]*)"
_QUESTION_PARSERS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], Task]], ...] = (
    (re.compile(rf"what is {_NUM} \+ {_NUM}\?"), lambda m: _add_task(int(m[1]), int(m[2]))),
    (re.compile(r"repeat the word: ([a-z]+)"), lambda m: _copy_task(m[1])),
    (re.compile(r"reverse the word: ([a-z]+)"), lambda m: _reverse_task(m[1])),
    (re.compile(r"what colour is an? ([a-z]+)\?"), lambda m: _colour_task(m[1])),
)
_QUESTION_FORMS = (
    "'what is A + B?', 'repeat the word: W', 'reverse the word: W', 'what colour is a X?'"
)


@lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> Task:
    """Recover the task (skill, question, answer) from a prompt string.

    This is what lets :func:`gold_reward` need only the prompt text, e.g. from a
    PPO rollout. Surrounding whitespace is tolerated. Raises ``ValueError`` for
    anything the toy world could not have produced.
    """
    m = _PROMPT_RE.fullmatch(prompt.strip())
    if m is None:
        raise ValueError(
            f"not a toy-world prompt (expected 'User: <question>\\nBot:'): {prompt!r}"
        )
    question = m["q"]
    for pattern, build in _QUESTION_PARSERS:
        qm = pattern.fullmatch(question)
        if qm is not None:
            return build(qm)  # may raise ValueError (unknown colour object)
    raise ValueError(
        f"unrecognised toy-world question {question!r}; known forms: {_QUESTION_FORMS}"
    )


def split_document(document: str) -> tuple[str, str]:
    """Split a document ``prompt + response`` at the first ``"\\nBot:"``.

    Used to score pretraining documents with :func:`gold_reward`.
    """
    marker = "\nBot:"
    i = document.find(marker)
    if i < 0:
        raise ValueError(f"not a toy-world document (no '\\nBot:'): {document!r}")
    cut = i + len(marker)
    return document[:cut], document[cut:]


# --------------------------------------------------------------------------
# Gold reward
# --------------------------------------------------------------------------


def _score(answer: str, response: str, finished: bool = True) -> float:
    """The gold formula for a known answer (see module docstring)."""
    s = response.strip()
    if not s:
        return 0.0
    head = s.split(maxsplit=1)[0].rstrip(".,")
    correct = 1.0 if head == answer else 0.0
    if finished:
        extra = len(s) - len(head)
        clean = max(0.0, 1.0 - extra / _EXTRA_CHARS_TO_ZERO)
    else:
        clean = 0.0
    return _W_CORRECT * correct + _W_CLEAN * clean


def gold_reward(prompt: str, response: str, finished: bool = True) -> float:
    """Score ``response`` to a toy-world ``prompt`` in [0, 1].

    ``response`` is the generated text with special tokens removed and cut at
    the first EOS; ``finished=False`` means generation hit its length limit
    without emitting EOS, which forfeits the clean-ending part (0.3).
    """
    return _score(parse_prompt(prompt).answer, response, finished)


def gold_reward_batch(
    prompts: Sequence[str],
    responses: Sequence[str],
    finished: Optional[Sequence[bool]] = None,
) -> list[float]:
    """:func:`gold_reward` over aligned lists (``finished`` defaults to all True)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if finished is None:
        finished = [True] * len(prompts)
    elif len(finished) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(finished)} finished flags")
    return [gold_reward(p, r, bool(f)) for p, r, f in zip(prompts, responses, finished)]


# --------------------------------------------------------------------------
# Realistic mistakes
# --------------------------------------------------------------------------


def _add_split(a: int, b: int) -> str:
    """Which split owns the unordered operand pair {a, b} (fixed, seed-independent)."""
    lo, hi = min(a, b), max(a, b)
    bucket = zlib.crc32(f"{lo}+{hi}".encode()) % _HELD_OUT_BUCKETS
    return "eval" if bucket == 0 else "test" if bucket == 1 else "train"


def _dedupe_wrong(cands: list[str], answer: str) -> list[str]:
    out: list[str] = []
    for c in cands:
        if c and c != answer and c not in out:
            out.append(c)
    return out


def _drop_letter(w: str, rng: random.Random) -> str:
    i = rng.randrange(len(w))
    return w[:i] + w[i + 1:]


def _double_letter(w: str, rng: random.Random) -> str:
    i = rng.randrange(len(w))
    return w[: i + 1] + w[i:]


def _swap_adjacent(w: str, rng: random.Random) -> str:
    if len(w) < 2:
        return w
    i = rng.randrange(len(w) - 1)
    return w[:i] + w[i + 1] + w[i] + w[i + 2:]


def _wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible mistake: close to the answer, never equal to it.

    add: off by one or ten, digits swapped, carry forgotten;
    copy: reversed, a letter dropped/doubled/swapped, another word;
    reverse: copied instead, a letter dropped/swapped, only partly reversed;
    colour: another colour.
    """
    ans = task.answer
    if task.skill == "add":
        a, b = (int(x) for x in re.findall(r"\d+", task.question))
        s = a + b
        no_carry = int(
            "".join(
                str((int(x) + int(y)) % 10)
                for x, y in zip(str(a).zfill(len(str(s))), str(b).zfill(len(str(s))))
            )
        )
        cands = [s + 1, s - 1, s + 10, s - 10, int(str(s)[::-1]), no_carry]
        wrong = _dedupe_wrong([str(c) for c in cands if c >= 0], ans)
    elif task.skill == "copy":
        w = ans
        cands = [w[::-1], _drop_letter(w, rng), _double_letter(w, rng), _swap_adjacent(w, rng)]
        wrong = _dedupe_wrong(cands, ans) + [rng.choice([x for x in WORDS if x != w])]
    elif task.skill == "reverse":
        w = ans[::-1]  # the word in the question
        cands = [w, _drop_letter(ans, rng), _swap_adjacent(ans, rng), w[0] + w[1:][::-1]]
        wrong = _dedupe_wrong(cands, ans)
    elif task.skill == "colour":
        wrong = [c for c in _PALETTE if c != ans]
    else:  # pragma: no cover - Task is only built by this module
        raise ValueError(f"unknown skill {task.skill!r}")
    return rng.choice(wrong)


def _ramble(answer_token: str, rng: random.Random, min_clauses: int = 1) -> str:
    """``answer, i think. or maybe not, who knows really.`` (1..3 filler clauses)."""
    k = rng.randint(min_clauses, 3)
    clauses = rng.sample(_FILLERS, k)
    out = answer_token + ", " + clauses[0]
    for c in clauses[1:]:
        out += rng.choice((". ", ", ")) + c
    return out + "."


def toy_skills_field() -> Any:
    """The `toy_skills` key of a stage's arguments dataclass (all skills by default), declared once."""
    return field(
        default_factory=lambda: list(SKILLS), metadata={"help": "toy world: skills to mix (the same in every stage of a chain)"}
    )


def check_toy_keys(max_digits: int, skills: Sequence[str]) -> None:
    """The recipe-level check of the toy world's knobs (keys toy_max_digits, toy_skills), run by each
    stage's arguments before any data or model is loaded, so that the message names the recipe key."""
    if not 1 <= max_digits <= 9:
        raise ValueError(f"key 'toy_max_digits' must be in 1..9, got {max_digits}")
    unknown = [skill for skill in skills if skill not in SKILLS]
    if unknown or not skills:
        raise ValueError(f"key 'toy_skills': choose one or more of {', '.join(SKILLS)}, got {list(skills)}")


# --------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------


@dataclass
class ToyWorld:
    """Deterministic generator of every dataset the pipeline needs.

    Same knobs + same seed -> identical outputs; each method and split draws
    from its own ``random.Random`` stream derived from ``seed`` (the global
    ``random`` module is never touched). Lists are prefix-stable:
    ``tasks(10)[:5] == tasks(5)``.

    Knobs: ``max_digits`` (addition operand digits, difficulty of ``add``),
    ``max_word_len`` (3..7 picks from :data:`WORDS`; above 7 adds two-word
    compounds), ``skills`` (which skills to mix, uniformly).
    """

    seed: int = 0
    max_digits: int = 2
    max_word_len: int = 7
    skills: tuple[str, ...] = field(default=SKILLS)

    def __post_init__(self) -> None:
        if not 1 <= self.max_digits <= 9:
            raise ValueError(f"max_digits must be in 1..9, got {self.max_digits}")
        if self.max_word_len < 3:
            raise ValueError(f"max_word_len must be >= 3, got {self.max_word_len}")
        self.skills = tuple(self.skills)
        unknown = [s for s in self.skills if s not in SKILLS]
        if not self.skills or unknown:
            raise ValueError(f"skills must be a non-empty subset of {SKILLS}, got {self.skills}")
        self._words = tuple(w for w in WORDS if len(w) <= self.max_word_len)

    @classmethod
    def from_recipe(cls, recipe: Any) -> "ToyWorld":
        """The world a stage recipe describes by its keys toy_seed, toy_max_digits and toy_skills.

        ``recipe`` is a stage's arguments dataclass or a plain recipe dict; missing keys take the
        defaults, so that every stage of a chain rebuilds the same world from its own recipe.
        """
        get = recipe.get if isinstance(recipe, Mapping) else (lambda key, default: getattr(recipe, key, default))
        skills = get("toy_skills", None) or SKILLS
        return cls(seed=get("toy_seed", 0), max_digits=get("toy_max_digits", 2), skills=tuple(skills))

    # -- random streams and sampling ---------------------------------------

    def _rng(self, purpose: str, split: str) -> random.Random:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return random.Random(f"toy_world:{self.seed}:{purpose}:{split}")

    def _number(self, rng: random.Random) -> int:
        d = rng.randint(1, self.max_digits)
        return rng.randrange(0 if d == 1 else 10 ** (d - 1), 10**d)

    def _word(self, rng: random.Random) -> str:
        if self.max_word_len > 7 and rng.random() < 0.5:
            first = rng.choice(self._words)
            rest = [w for w in self._words if len(first) + len(w) <= self.max_word_len]
            if rest:
                return first + rng.choice(rest)
            return first
        return rng.choice(self._words)

    def _task(self, rng: random.Random, split: str) -> Task:
        skill = rng.choice(self.skills)
        if skill == "add":
            for _ in range(10_000):
                a, b = self._number(rng), self._number(rng)
                if _add_split(a, b) == split:
                    return _add_task(a, b)
            raise RuntimeError(f"no addition pair for split {split!r}")  # pragma: no cover
        if skill == "copy":
            return _copy_task(self._word(rng))
        if skill == "reverse":
            return _reverse_task(self._word(rng))
        return _colour_task(rng.choice(_OBJECTS))

    # -- public datasets -----------------------------------------------------

    def tasks(self, n: int, split: str = "train") -> list[Task]:
        """``n`` tasks of ``split``, skills mixed uniformly (additions held out per split)."""
        rng = self._rng("tasks", split)
        return [self._task(rng, split) for _ in range(n)]

    def prompts(self, n: int, split: str = "eval") -> list[str]:
        """The prompts of ``tasks(n, split)`` -- what PPO and evaluation generate from."""
        return [t.prompt for t in self.tasks(n, split)]

    def pretraining_corpus(self, n: int, good_fraction: float = 0.6) -> list[str]:
        """``n`` train-split documents (no EOS), a fraction ``good_fraction`` of them good.

        The rest are bad the way web text is bad: 35% a plausible wrong answer,
        55% wrong *and* rambling, 10% right but rambling (rambles here have 2-3
        filler clauses). With the default ``good_fraction=0.6`` the documents'
        mean gold reward is about 0.68 (0.6 + 0.4 * ~0.19), so a model imitating
        this corpus has clear room to improve through SFT and RL.
        """
        if not 0.0 <= good_fraction <= 1.0:
            raise ValueError(f"good_fraction must be in [0, 1], got {good_fraction}")
        rng = self._rng("corpus", "train")
        docs = []
        for _ in range(n):
            task = self._task(rng, "train")
            if rng.random() < good_fraction:
                response = task.answer
            else:
                u = rng.random()
                if u < 0.35:
                    response = _wrong_answer(task, rng)
                elif u < 0.90:
                    response = _ramble(_wrong_answer(task, rng), rng, min_clauses=2)
                else:
                    response = _ramble(task.answer, rng, min_clauses=2)
            docs.append(task.document(" " + response))
        return docs

    def sft_pairs(self, n: int, split: str = "train", error_rate: float = 0.0) -> list[dict[str, str]]:
        """``{"prompt", "completion"}`` demonstrations (completion = ``" answer"``).

        ``error_rate`` models imperfect human demonstrators: that share of the demonstrations are
        labeller mistakes, half a plausible wrong answer (the near misses of :func:`_wrong_answer`),
        half the right answer with a rambling ending. Judging an answer is easier than writing one
        (the premise of RLHF), so :meth:`preference_pairs` stay correct: an SFT model imitates the
        mistakes, and a reward model, PPO or DPO can learn to avoid them. The tasks (prompts) do not
        depend on ``error_rate``: the mistakes come from a random stream of their own.
        """
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        rng = self._rng("sft", split)
        mistakes = self._rng("sft_mistakes", split)
        out = []
        for _ in range(n):
            t = self._task(rng, split)
            answer = t.answer
            if mistakes.random() < error_rate:
                answer = _wrong_answer(t, mistakes) if mistakes.random() < 0.5 else _ramble(t.answer, mistakes)
            out.append({"prompt": t.prompt, "completion": " " + answer})
        return out

    def preference_pairs(self, n: int, split: str = "train") -> list[dict[str, str]]:
        """``{"prompt", "chosen", "rejected"}`` with gold(chosen) > gold(rejected), always.

        The mix makes a reward model learn correctness *and* brevity, and that
        correctness matters more:

        ====  =====================  ======================  ===============
        p     chosen                 rejected                teaches
        ====  =====================  ======================  ===============
        35%   right, clean (1.0)     wrong, clean (0.3)      correctness
        25%   right, clean (1.0)     right, rambling (<1)    brevity
        15%   right, clean (1.0)     wrong, rambling (<0.3)  both
        15%   right, rambling (>=.7) wrong, clean (0.3)      correctness > brevity
        10%   wrong, clean (0.3)     wrong, rambling (<0.3)  brevity alone
        ====  =====================  ======================  ===============
        """
        rng = self._rng("preference", split)
        out = []
        for _ in range(n):
            t = self._task(rng, split)
            u = rng.random()
            if u < 0.35:
                chosen, rejected = t.answer, _wrong_answer(t, rng)
            elif u < 0.60:
                chosen, rejected = t.answer, _ramble(t.answer, rng)
            elif u < 0.75:
                chosen, rejected = t.answer, _ramble(_wrong_answer(t, rng), rng)
            elif u < 0.90:
                chosen, rejected = _ramble(t.answer, rng), _wrong_answer(t, rng)
            else:
                wrong = _wrong_answer(t, rng)
                chosen, rejected = wrong, _ramble(wrong, rng)
            chosen, rejected = " " + chosen, " " + rejected
            # Holds by construction (see table); checked because downstream relies on it.
            assert _score(t.answer, chosen) > _score(t.answer, rejected), (t, chosen, rejected)
            out.append({"prompt": t.prompt, "chosen": chosen, "rejected": rejected})
        return out

    def w2s_examples(self, n: int, split: str = "train") -> list[dict[str, object]]:
        """``{"text": prompt + " " + candidate, "label": 1 if candidate is right else 0}``.

        Exactly balanced (labels come in shuffled 1/0 pairs, so any even-length
        prefix is 50/50). Negatives are hard: the same near-miss mistakes as
        :func:`_wrong_answer` (off-by-one sums, one letter swapped ...), so
        judging them requires doing the task; ``max_digits``/``max_word_len``
        set how hard that is, which makes a small model weak and a larger one
        strong.
        """
        rng = self._rng("w2s", split)
        out: list[dict[str, object]] = []
        first_label = 1
        for i in range(n):
            t = self._task(rng, split)
            if i % 2 == 0:
                first_label = int(rng.random() < 0.5)
                label = first_label
            else:
                label = 1 - first_label
            candidate = t.answer if label else _wrong_answer(t, rng)
            out.append({"text": f"{t.prompt} {candidate}", "label": label})
        return out
