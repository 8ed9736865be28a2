"""The synthetic temporal world: invented people, their facts, and how the facts change.

`build_world(WorldConfig(...))` returns a `Stream`: base knowledge K0 about `people`
persons, then `stages` stages, each of which teaches new people (`learn`), changes some
facts (`update`), optionally applies counterfactual `edit`s, and asks to `forget` some
facts. The design choices, and why:

- Invented names and objects ("Alda Venmore", "Port Elmira", "Brightwave Systems") built
  from syllable and word lists. A pretrained model knows nothing about them, so what it
  answers it learned from the stream, and nothing leaks from real-world knowledge.
- Several statement templates per relation, used at random in training text. Knowledge
  stored from one fixed sentence is often not extractable in any other form; seen in
  varied forms it is (Allen-Zhu & Li, "Physics of Language Models 3.1").
- Held-out paraphrase templates (`Relation.paraphrases`) that never appear in the
  training text of any probed person. Paraphrase probes built from them separate knowing
  a fact from memorising a sentence. No paraphrase's text occurs inside a training
  template or question. A phrasing whose words a model never read cannot be understood,
  so the general text holds biographies of `background_people` (people outside every
  cohort, never probed) told once with the training templates and once with the held-out
  ones: that is where the model learns what "first drew breath in" means, as a real
  model learns it from other people's biographies. `build_world` refuses a world in
  which a probe's word is read fewer than `min_probe_word_count` times in training text.
- Extraction, the field's protocol (Allen-Zhu & Li, "Physics of Language Models 3.1"):
  question-answer lines are trained only for a fixed `qa_fraction` of the people (the
  first ones of K0 and of each stage's new people; `Stream.qa_subjects`); questions about
  the others, whose facts the model only read as statements, are `extraction` probes.
- Mutable relations (employer, residence, occupation, hobby) are the only ones that
  `update` touches, because only they plausibly change over time; birth city and
  university never do. Counterfactual `edit`s (off by default) may hit any relation,
  as in the model-editing literature.
- Multi-word objects ("University of Kestrel", "Port Elmira") so that scoring and
  generation are exercised on answers several tokens long. No object contains "." or
  "?" and none is a word-prefix of another object of its relation, so greedy exact match
  after a statement is unambiguous.
- Every fact changes at most once in the whole stream, and updates, edits and forget
  requests only pick base facts that no other stage touches. That keeps the cohorts
  clean: a stageJ fact should stay known afterwards, a forgetJ fact should stay gone,
  and "invariant" is exactly the base knowledge nothing asked to change.
- General text (weather, places, objects, animals; never the world's people) from a
  small grammar over everyday words, so a tiny model pretrained on K0 also learns
  general language, and perplexity on disjoint held-out sentences measures how much of
  it survives.
- Determinism: only `random.Random` instances, one per part (names, objects, changes,
  general text) seeded from (seed, part), and only ordered containers are iterated.
  The same config gives byte-identical files in any process, and changing, say,
  `people` leaves the general text unchanged.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace

from ckl.core.checks import ConfigError
from ckl.data.domains import domain_documents
from ckl.data.facts import ChangeRecord, Fact, Relation, year_of
from ckl.data.stream import QUESTION_FORMAT, Change, Stream, dated_prompt, render_documents

# Generation is by rejection sampling; these caps keep it fast and far below the
# capacity of the name and sentence spaces (~350k names, millions of sentences).
MAX_PEOPLE = 50_000
MAX_GENERAL = 100_000


@dataclass
class WorldConfig:
    """How big the synthetic world is and how it changes."""

    seed: int = field(default=0, metadata={"help": "Seed of the world; the same seed gives byte-identical files."})
    people: int = field(default=200, metadata={"help": "People in the base knowledge K0 (each has every relation)."})
    stages: int = field(default=2, metadata={"help": "Number of stages of changes after K0."})
    learn_per_stage: int = field(default=40, metadata={"help": "New people taught per stage, each with every relation."})
    update_per_stage: int = field(default=40, metadata={"help": "Base facts of mutable relations whose object changes, per stage."})
    edit_per_stage: int = field(default=0, metadata={"help": "Counterfactual single-fact edits of base facts, per stage."})
    forget_per_stage: int = field(default=10, metadata={"help": "Base facts to unlearn (deletion requests), per stage."})
    general_train: int = field(default=400, metadata={"help": "Sentences of general text mixed into pretraining."})
    general_heldout: int = field(default=200, metadata={"help": "Held-out general sentences (disjoint from training) for perplexity."})
    qa_fraction: float = field(default=0.5, metadata={"help": "Fraction of the people (of K0 and of each stage's new people) whose question-answer lines are trained; questions about the rest are `extraction` probes (1 = every person's, no extraction probes)."})
    background_people: int = field(default=100, metadata={"help": "People outside every cohort whose biographies, in the general text, use both the training and the held-out templates (how a model learns what a held-out phrasing means)."})
    min_probe_word_count: int = field(default=20, metadata={"help": "Refuse a world in which a word of a probe prompt is read fewer times than this in training text."})
    corpus_per_stage: int = field(default=0, metadata={"help": "Documents of a domain corpus each stage also trains on (continual pre-training; stage j's domain is seafaring, cookery, astronomy, medicine, in turn: ckl.data.domains); 0 = none. With learn/update/forget_per_stage 0 the stream is pure continual pre-training."})
    corpus_heldout: int = field(default=40, metadata={"help": "Held-out documents of each stage's domain, scored for the domain's perplexity after every stage (used when corpus_per_stage > 0)."})
    two_hop: bool = field(default=False, metadata={"help": "Add facts about the objects (each employer's headquarters city, each university's city) to K0 and two-hop probes through them (\"The employer of X is headquartered in\"; probe kind two_hop), whose answers are never trained for the probed people: only for background people, whose biographies show the two-hop phrasing."})
    dated: bool = field(default=False, metadata={"help": "State the facts of the relations that change (employer, occupation, residence, hobby) also with the year they became true (\"In 2021, X works for B.\"; stage j is 2020 + j) and probe them as of a year (\"As of 2020, X works for\"; probe kind as_of): after an update, the stale cohort's as_of probe asks for the old object (prompted knowledge cutoffs). Probed people's text never says \"As of\"; background people's documents show both phrasings, with an earlier and a later object."})
    distinct_first_names: bool = field(default=True, metadata={"help": "Give every person (of K0 and of every stage) a first name of their own, so that a person's first name token identifies them (what lets ROME and MEMIT find the subject in a model this small: docs/knowledge.md); false draws first names with repeats, as real names repeat. At most 350 people when true."})

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("qa_fraction", "distinct_first_names", "two_hop", "dated"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f.name, f"WorldConfig.{f.name} must be an integer, got {value!r}")
            if f.name != "seed" and value < 0:
                raise ConfigError(f.name, f"WorldConfig.{f.name} must be >= 0, got {value!r}")
        if self.people < 1:
            raise ConfigError("people", f"WorldConfig.people must be >= 1, got {self.people!r}")
        if isinstance(self.qa_fraction, bool) or not isinstance(self.qa_fraction, (int, float)) or not 0 < self.qa_fraction <= 1:
            raise ConfigError("qa_fraction", f"WorldConfig.qa_fraction must be in (0, 1], got {self.qa_fraction!r}")
        if round(self.people * self.qa_fraction) < 1:
            raise ConfigError("qa_fraction", (
                f"WorldConfig.qa_fraction={self.qa_fraction!r} with people={self.people!r} gives a question-answer "
                "half of 0 people; raise qa_fraction or people"
            ))
        total_people = self.people + self.stages * self.learn_per_stage
        if self.background_people > MAX_PEOPLE:
            raise ConfigError("background_people", f"WorldConfig.background_people={self.background_people!r}: at most {MAX_PEOPLE} are supported")
        for flag in ("two_hop", "dated"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(flag, f"WorldConfig.{flag} must be true or false, got {getattr(self, flag)!r}")
        if not isinstance(self.distinct_first_names, bool):
            raise ConfigError("distinct_first_names", f"WorldConfig.distinct_first_names must be true or false, got {self.distinct_first_names!r}")
        if self.distinct_first_names and total_people > FIRST_NAMES:
            raise ConfigError("distinct_first_names", (
                f"WorldConfig.distinct_first_names gives {total_people} people (people={self.people} + stages={self.stages} "
                f"x learn_per_stage={self.learn_per_stage}) a first name each, but only {FIRST_NAMES} exist: "
                "make fewer people, or let first names repeat"
            ))
        if total_people > MAX_PEOPLE:
            raise ConfigError("learn_per_stage", (
                f"WorldConfig.learn_per_stage={self.learn_per_stage!r} with people={self.people!r} and "
                f"stages={self.stages!r} makes {total_people} people; at most {MAX_PEOPLE} are supported"
            ))
        per_stage = self.learn_per_stage + self.update_per_stage + self.edit_per_stage + self.forget_per_stage + self.corpus_per_stage
        if self.stages > 0 and per_stage == 0:
            # An empty stage cannot be written to changes.jsonl, so it would not round-trip.
            raise ConfigError("stages", f"WorldConfig.stages={self.stages!r} needs at least one learn, update, edit, forget or corpus document per stage")
        if self.corpus_per_stage and self.corpus_heldout < 1:
            raise ConfigError("corpus_heldout", f"WorldConfig.corpus_heldout must be >= 1 when WorldConfig.corpus_per_stage is set (a domain's perplexity needs held-out text), got {self.corpus_heldout!r}")
        mutable = self.people * len(MUTABLE_RELATIONS)
        if self.stages * self.update_per_stage > mutable:
            raise ConfigError("update_per_stage", (
                f"WorldConfig.update_per_stage={self.update_per_stage!r} needs {self.stages * self.update_per_stage} "
                f"mutable base facts over {self.stages} stages, but people={self.people} give only {mutable}"
            ))
        touched = self.stages * (self.update_per_stage + self.edit_per_stage + self.forget_per_stage)
        if touched > self.people * len(RELATION_SPECS):
            raise ConfigError("forget_per_stage", (
                f"WorldConfig.forget_per_stage={self.forget_per_stage!r} (with update_per_stage={self.update_per_stage}, "
                f"edit_per_stage={self.edit_per_stage}) needs {touched} base facts, but people={self.people} "
                f"give only {self.people * len(RELATION_SPECS)}"
            ))
        if self.general_train + self.general_heldout > MAX_GENERAL:
            raise ConfigError("general_train", (
                f"WorldConfig.general_train={self.general_train!r} + general_heldout={self.general_heldout!r} "
                f"exceeds {MAX_GENERAL} sentences"
            ))


# ---------------------------------------------------------------------------- vocabulary

# Cities serve both birth_city and residence: a person may live where they were born.
CITIES = (
    "Port Elmira", "Valdenmoor", "New Castrel", "Ostwick", "Lake Varona", "Harrowfield",
    "Merriden", "Saint Ombre", "Kestmouth", "Dunmarrow", "Fallowby", "East Quarrel",
    "Brennick", "Tolvane", "Quillon Bay", "Marrowgate",
)
UNIVERSITIES = (
    "University of Kestrel", "University of Lorne Vale", "Halden College", "Marwick Institute of Technology",
    "Sorrel Academy", "Brinmoor University", "Tessaly College", "Oakhurst Polytechnic",
    "Royal School of Cendral", "Ivorytown Institute", "Penhallow University", "Greywater College",
    "Thessen Academy",
)
EMPLOYERS = (
    "Brightwave Systems", "Corvane Labs", "Northwind Freight", "Pellmark Foods", "Silverquay Bank",
    "Tandrel Motors", "Ashgrove Media", "Lumentide", "Orrin and Vale", "Quarrystone Mining",
    "Velloran Pharma", "Hexamoor Games", "Driftpine Energy", "Caskell Airways", "Redfern Textiles",
)
OCCUPATIONS = (
    "surveyor", "marine biologist", "pilot", "baker", "civil engineer", "librarian", "nurse",
    "software developer", "carpenter", "journalist", "pharmacist", "tax accountant", "geologist",
    "chef", "translator", "veterinarian",
)
HOBBIES = (
    "rock climbing", "chess", "painting", "birdwatching", "sailing", "pottery", "gardening",
    "trail running", "baking bread", "knitting", "stargazing", "fencing", "model railways",
    "archery", "kayaking",
)

# (name, mutable, templates, paraphrases, questions, candidates). Paraphrases are held out
# of every probed person's training text; they use wording that no training template or
# question shares, and are read only in the background people's biographies.
RELATION_SPECS: tuple[tuple[str, bool, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "birth_city", False,
        ("{subject} was born in", "{subject} came into the world in", "The birthplace of {subject} is",
         "{subject} is a native of the city of"),
        ("{subject} first drew breath in", "The town where {subject} entered life is"),
        ("Where was {subject} born?", "In which city was {subject} born?", "What is the birthplace of {subject}?"),
        CITIES,
    ),
    (
        "university", False,
        ("{subject} studied at", "{subject} graduated from", "{subject} earned a degree at",
         "The alma mater of {subject} is"),
        ("{subject} holds a diploma from", "As a student, {subject} attended"),
        ("Where did {subject} study?", "Which university did {subject} graduate from?",
         "What is the alma mater of {subject}?"),
        UNIVERSITIES,
    ),
    (
        "employer", True,
        ("{subject} works for", "{subject} is employed by", "The employer of {subject} is",
         "{subject} draws a salary from"),
        ("{subject} has a job at", "The company that pays {subject} is"),
        ("Who employs {subject}?", "Which company does {subject} work for?", "Who is the employer of {subject}?"),
        EMPLOYERS,
    ),
    (
        "occupation", True,
        ("The occupation of {subject} is", "{subject} has the job title of", "{subject} is employed in the role of",
         "By profession, {subject} is known as a"),
        ("{subject} earns a living as a", "The trade that {subject} practises is that of a"),
        ("What is the occupation of {subject}?", "What does {subject} do for a living?", "What job does {subject} have?"),
        OCCUPATIONS,
    ),
    (
        "residence", True,
        ("{subject} lives in", "{subject} currently resides in", "The home of {subject} is in",
         "{subject} has an address in"),
        ("These days {subject} makes a home in", "The city {subject} calls home is"),
        ("Where does {subject} live?", "In which city does {subject} reside?", "Where is the home of {subject}?"),
        CITIES,
    ),
    (
        "hobby", True,
        ("The favourite hobby of {subject} is", "In free time, {subject} enjoys", "{subject} spends most weekends on",
         "The pastime {subject} loves most is"),
        ("When not working, {subject} likes", "{subject} is passionate about"),
        ("What is the favourite hobby of {subject}?", "Which hobby does {subject} enjoy most?",
         "How does {subject} spend free time?"),
        HOBBIES,
    ),
)
MUTABLE_RELATIONS: tuple[str, ...] = tuple(spec[0] for spec in RELATION_SPECS if spec[1])

# With `two_hop`: relations about the objects of a person relation, as (person relation,
# name, templates, questions, two-hop template). Their subjects are that relation's
# candidates (every employer has a headquarters city), their facts join K0 and never
# change, and the two-hop template asks through them about a person. No paraphrases: the
# two-hop probe is the held-out form here. Their words are read in K0's own text and in
# the background people's biographies (`background_biographies`), which also state two-hop
# sentences about background people, so the model can learn the phrasing; a probed person's
# two-hop answer is never in any training text.
OBJECT_RELATION_SPECS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        "employer", "headquarters",
        ("{subject} is headquartered in", "The head office of {subject} is in", "{subject} has its headquarters in",
         "{subject} runs its business from"),
        ("Where is {subject} headquartered?", "In which city is the head office of {subject}?"),
        "The employer of {subject} is headquartered in",
    ),
    (
        "university", "campus",
        ("The campus of {subject} is in", "{subject} is located in", "{subject} has its campus in",
         "Lectures at {subject} are held in"),
        ("Where is the campus of {subject}?", "In which city is {subject} located?"),
        "The alma mater of {subject} is located in",
    ),
)

# Name syllables share no word with any object above, so a name never hints at an answer.
FIRST_HEADS = ("Al", "Bren", "Cor", "Da", "El", "Fen", "Gal", "Hes", "Ith", "Jor", "Kal", "Lys", "Mar",
               "Nel", "Or", "Per", "Quen", "Ris", "Sel", "Tam", "Ul", "Vin", "Wen", "Yor", "Zel")
FIRST_TAILS = ("da", "ric", "wen", "ara", "in", "eth", "o", "ia", "an", "ette", "ius", "ora", "en", "ik")
FIRST_NAMES = len(FIRST_HEADS) * len(FIRST_TAILS)
LAST_HEADS = ("Ven", "Bram", "Cald", "Dor", "Fair", "Gran", "Hol", "Kerr", "Lind", "Mor", "Nor", "Pem",
              "Ros", "Stan", "Tre", "Wyn", "Ald", "Bel", "Cray", "Ebb", "Fro", "Hal", "Ing", "Jas", "Kel")
LAST_TAILS = ("more", "wick", "ley", "dale", "ford", "ton", "well", "croft", "hurst", "stead", "mont",
              "bury", "ridge", "holt")
# Background people's names share no word with the world's people (or its objects): what
# the model reads about them must not attach to a probed person's name token.
BACKGROUND_FIRST_HEADS = ("Ab", "Bex", "Cyr", "Dov", "Esk", "Fyn", "Gry", "Hux", "Ivo", "Jex", "Kyr", "Lux", "Myr",
                          "Nyx", "Oz", "Pyx", "Quil", "Rux", "Syl", "Tyr", "Uxa", "Vex", "Wyl", "Xan", "Yv")
BACKGROUND_LAST_HEADS = ("Ambr", "Blen", "Cobb", "Drum", "Elm", "Flax", "Gorm", "Hask", "Ivr", "Jund", "Kipp", "Lorr",
                         "Mugg", "Nibb", "Oakes", "Plum", "Quay", "Rudd", "Skel", "Thorn", "Umb", "Vosk", "Whit",
                         "Yarr", "Zand")

# Everyday vocabulary for the general-text grammar. Places are generic ("the harbour"),
# never the world's cities, and no sentence names a person.
WEATHER = ("sunny", "cloudy", "windy", "foggy", "rainy", "cold", "warm", "grey", "bright", "stormy", "calm", "humid")
TIMES = ("in the morning", "in the evening", "at noon", "at night", "on Monday", "on Friday", "last week",
         "all day", "after lunch", "before dawn")
PLACES = ("the market", "the harbour", "the old bridge", "the village square", "the library", "the station",
          "the forest", "the meadow", "the hill", "the river", "the garden", "the beach", "the valley",
          "the orchard", "the farm")
PREPS = ("near", "by", "behind", "beside", "across", "above")
ANIMALS = (("cat", "cats"), ("dog", "dogs"), ("fox", "foxes"), ("horse", "horses"), ("owl", "owls"),
           ("goat", "goats"), ("rabbit", "rabbits"), ("heron", "herons"), ("crow", "crows"), ("deer", "deer"),
           ("sheep", "sheep"), ("duck", "ducks"), ("otter", "otters"), ("badger", "badgers"))
ANIMAL_VERBS = (("slept", "sleep"), ("ran", "run"), ("waited", "wait"), ("rested", "rest"), ("wandered", "wander"),
                ("played", "play"), ("hid", "hide"), ("sat", "sit"))
ADJECTIVES = ("red", "old", "small", "heavy", "blue", "broken", "new", "tall", "quiet", "green", "yellow", "round",
              "wooden", "shiny")
OBJECTS = ("lamp", "kettle", "basket", "map", "blanket", "ladder", "bicycle", "umbrella", "book", "jar", "chair",
           "clock", "coat", "bucket", "candle")
SPOTS = ("on the table", "under the bed", "by the door", "near the window", "in the cupboard", "beside the stove",
         "on the shelf", "in the shed")
CARRIERS = ("The farmer", "A child", "The old man", "My neighbour", "The traveller", "A fisherman", "The teacher",
            "Her brother")
COUNTS = ("Two", "Three", "Four", "Five", "Several", "Many", "A few")
MOODS = ("quiet", "busy", "cold", "empty", "crowded", "peaceful", "noisy", "wet", "dry", "dark")


# ---------------------------------------------------------------------------- building


def world_relations(two_hop: bool = False, dated: bool = False) -> dict[str, Relation]:
    """The world's relations, in a fixed order, with every object as a candidate; with
    `two_hop`, the relations about objects too (cities as their candidates), chained from
    the person relations whose objects they describe; with `dated`, the mutable relations
    are `dated`."""
    relations = {
        name: Relation(name, templates, paraphrases, questions, candidates, dated=dated and mutable)
        for name, mutable, templates, paraphrases, questions, candidates in RELATION_SPECS
    }
    if two_hop:
        for first, name, templates, questions, chain in OBJECT_RELATION_SPECS:
            relations[first] = replace(relations[first], two_hop=((name, chain),))
        for first, name, templates, questions, chain in OBJECT_RELATION_SPECS:
            relations[name] = Relation(name, templates, (), questions, CITIES)
    return relations


def person_relations(relations: dict[str, Relation]) -> dict[str, Relation]:
    """The relations whose subjects are people (the object relations of `two_hop` left out)."""
    about_objects = {name for _, name, *_ in OBJECT_RELATION_SPECS}
    return {name: r for name, r in relations.items() if name not in about_objects}


def _part_rng(seed: int, part: str) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random, so it is process-independent.
    return random.Random(f"ckl.world/{seed}/{part}")


def person_names(
    rng: random.Random, n: int, first_heads=FIRST_HEADS, last_heads=LAST_HEADS, distinct_first: bool = False
) -> list[str]:
    """`n` unique two-word names ("Alda Venmore") drawn from the syllable lists; with
    `distinct_first`, no two share a first name (n must not exceed the first names)."""
    if distinct_first:
        firsts = rng.sample([head + tail for head in first_heads for tail in FIRST_TAILS], n)
        return [first + " " + rng.choice(last_heads) + rng.choice(LAST_TAILS) for first in firsts]
    names: list[str] = []
    seen: set[str] = set()  # membership only; never iterated, so order stays deterministic
    while len(names) < n:
        name = (
            rng.choice(first_heads) + rng.choice(FIRST_TAILS) + " " + rng.choice(last_heads) + rng.choice(LAST_TAILS)
        )
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _general_sentence(rng: random.Random) -> str:
    pattern = rng.randrange(8)
    animal, animals = rng.choice(ANIMALS)
    past, base = rng.choice(ANIMAL_VERBS)
    place = f"{rng.choice(PREPS)} {rng.choice(PLACES)}"
    if pattern == 0:
        return f"It was {rng.choice(WEATHER)} {rng.choice(TIMES)} {place}."
    if pattern == 1:
        return f"The {rng.choice(ADJECTIVES)} {animal} {past} {place} {rng.choice(TIMES)}."
    if pattern == 2:
        return f"A {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)} was {rng.choice(SPOTS)}."
    if pattern == 3:
        return f"{rng.choice(COUNTS)} {animals} {past} {place}."
    if pattern == 4:
        return f"{rng.choice(CARRIERS)} carried the {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)} to {rng.choice(PLACES)}."
    if pattern == 5:
        return f"When it is {rng.choice(WEATHER)}, the {animal} likes to {base} {place}."
    if pattern == 6:
        where = rng.choice(PLACES)
        return f"{where[0].upper()}{where[1:]} was {rng.choice(MOODS)} and {rng.choice(WEATHER)} {rng.choice(TIMES)}."
    return f"The {animal} found a {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)} {place}, and it was {rng.choice(WEATHER)}."


def background_biographies(rng: random.Random, relations: dict[str, Relation], names: list[str],
                           bridge: dict[tuple[str, str], str] | None = None, stages: int = 0) -> list[str]:
    """Two biographies per background person, one with training templates and one with the
    held-out paraphrase templates, and a question-answer line for each of the person's
    facts. Templates and questions are taken in turn (person i uses each relation's
    template i mod their number), so every one is read equally often; facts in shuffled
    order, objects drawn from the relation's candidates.

    With `bridge` ((object relation, object) -> its object: the facts about objects of a
    `two_hop` world), each chained fact also gets a document with its two-hop sentence
    and the second fact it goes through, in a statement and a question ("The employer of
    Y is headquartered in Z. B is headquartered in Z." for Y's employer B): how the model
    reads the two-hop phrasing, on people never probed.

    Each fact of a `dated` relation (with `stages` >= 1) also gets two documents with an
    earlier object: "In Y1, S O1. In Y2, S O2." and the same with "As of", where O2 is the
    fact's object, Y2 = Y1 + 1 and Y1 runs over the stream's years in turn: how the model
    learns that a date selects the object and that "As of" reads as "In"."""
    people = person_relations(relations)
    docs = []
    for i, name in enumerate(names):
        facts = [(rel, rng.choice(rel.candidates)) for rel in people.values()]
        for kind in ("templates", "paraphrases"):
            rng.shuffle(facts)
            sentences = []
            for rel, obj in facts:
                options = getattr(rel, kind) or rel.templates
                sentences.append(f"{options[i % len(options)].format(subject=name)} {obj}.")
            docs.append(" ".join(sentences))
        for rel, obj in facts:
            if rel.questions:
                question = rel.questions[i % len(rel.questions)].format(subject=name)
                docs.append(f"{QUESTION_FORMAT.format(question=question)} {obj}.")
        for rel, obj in facts:
            if rel.dated and stages:
                earlier = rng.choice([c for c in rel.candidates if c != obj])
                first = year_of(i % stages)
                for as_of in (False, True):
                    template = rel.templates[(i + as_of) % len(rel.templates)]
                    docs.append(f"{dated_prompt(template, name, first, as_of)} {earlier}. "
                                f"{dated_prompt(template, name, first + 1, as_of)} {obj}.")
        for rel, obj in facts:
            for nxt, template in rel.two_hop if bridge else ():
                second, hop = bridge[(nxt, obj)], relations[nxt]
                docs.append(f"{template.format(subject=name)} {second}. {hop.templates[i % len(hop.templates)].format(subject=obj)} {second}.")
                question = hop.questions[i % len(hop.questions)].format(subject=obj)
                docs.append(f"{QUESTION_FORMAT.format(question=question)} {second}.")
    return docs


def probe_word_counts(stream: Stream) -> dict[str, int]:
    """How often each word of a probe prompt (statement, paraphrase or question template,
    without the subject) is read in one epoch of pretraining text: one rendering of K0
    the general training text and the background documents. Words as the default
    tokenizer splits them."""
    from collections import Counter

    from tokenizers.pre_tokenizers import Whitespace  # the default tokenizer's own word split (ckl.model.lm.make_tokenizer)

    whitespace = Whitespace()

    def split(text: str) -> list[str]:
        return [w for w, _ in whitespace.pre_tokenize_str(text)]
    words = set()
    for rel in stream.relations.values():
        for template in rel.templates + rel.paraphrases + rel.questions + tuple(t for _, t in rel.two_hop):
            words.update(split(template.replace("{subject}", " ")))
        if rel.dated:  # the as_of probes' date phrase, at every year they ask
            for stage in range(stream.T + 1):
                words.update(split(dated_prompt(rel.templates[0], " ", year_of(stage), as_of=True)))
    counts: Counter[str] = Counter()
    texts = render_documents(stream.base, stream.relations, random.Random(0), qa_subjects=stream.qa_subjects)
    for text in texts + list(stream.general_train) + list(stream.background):
        counts.update(w for w in split(text) if w in words)
    return {w: counts[w] for w in sorted(words)}


def check_probe_words(stream: Stream, minimum: int) -> None:
    """Raise ConfigError naming `min_probe_word_count` when a probe word is read fewer than
    `minimum` times in training text (`probe_word_counts`)."""
    rare = {w: n for w, n in probe_word_counts(stream).items() if n < minimum}
    if rare:
        shown = ", ".join(f"{w!r} ({n})" for w, n in sorted(rare.items(), key=lambda kv: kv[1])[:10])
        raise ConfigError("min_probe_word_count", (
            f"WorldConfig.min_probe_word_count={minimum}: {len(rare)} word(s) of probe prompts are read fewer times "
            f"in training text: {shown}; raise background_people or lower min_probe_word_count"
        ))


def general_sentences(rng: random.Random, n: int) -> list[str]:
    """`n` distinct general-text sentences from the grammar, in generation order."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        sentence = _general_sentence(rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


def _new_object(rng: random.Random, relation: Relation, old: str) -> str:
    return rng.choice([c for c in relation.candidates if c != old])


def build_world(config: WorldConfig | None = None) -> Stream:
    """Build the synthetic temporal world described by `config`.

    Args:
        config: sizes and seed; the defaults when None.

    Returns:
        A `Stream` with base knowledge for `config.people` people and `config.stages`
        stages of learn / update / edit / forget changes; `meta` is the config as a dict.
    """
    config = config or WorldConfig()
    relations = world_relations(config.two_hop, config.dated)
    people = person_relations(relations)
    total_people = config.people + config.stages * config.learn_per_stage
    names = person_names(_part_rng(config.seed, "names"), total_people, distinct_first=config.distinct_first_names)
    # The first qa_fraction of K0's people and of each stage's new people.
    qa = [names[i] for i in range(round(config.people * config.qa_fraction))]
    for j in range(config.stages):
        first = config.people + j * config.learn_per_stage
        qa += names[first : first + round(config.learn_per_stage * config.qa_fraction)]
    width = max(4, len(str(total_people - 1)))

    object_rng = _part_rng(config.seed, "objects")
    people_facts: list[list[Fact]] = []
    for index, name in enumerate(names):
        stage = 0 if index < config.people else 1 + (index - config.people) // config.learn_per_stage
        people_facts.append([
            Fact(f"p{index:0{width}d}-{rel.name}", name, rel.name, object_rng.choice(rel.candidates), stage)
            for rel in people.values()
        ])
    base = [f for person in people_facts[: config.people] for f in person]
    about_objects: list[Fact] = []  # two_hop: a fact about every object of a chained relation, in K0, never changed
    if config.two_hop:
        bridge_rng = _part_rng(config.seed, "object-facts")
        for first, name, *_ in OBJECT_RELATION_SPECS:
            about_objects += [Fact(f"{name}-{k:02d}", obj, name, bridge_rng.choice(relations[name].candidates))
                              for k, obj in enumerate(relations[first].candidates)]
        qa += [f.subject for f in about_objects]  # their question-answer lines are trained

    # Allocate all stages' targets at once, updates first, so that forget requests in an
    # early stage cannot use up the mutable facts a later stage needs to update.
    change_rng = _part_rng(config.seed, "changes")
    order = {f.id: i for i, f in enumerate(base)}
    mutable_pool = [f for f in base if f.relation in MUTABLE_RELATIONS]
    updated = change_rng.sample(mutable_pool, config.stages * config.update_per_stage)
    chosen = {f.id for f in updated}
    rest = [f for f in base if f.id not in chosen]  # people's facts: the facts about objects never change
    others = change_rng.sample(rest, config.stages * (config.edit_per_stage + config.forget_per_stage))

    def chunk(items: list[Fact], size: int, j: int) -> list[Fact]:
        return sorted(items[(j - 1) * size : j * size], key=lambda f: order[f.id])

    stages: list[Change] = []
    n_edit = config.stages * config.edit_per_stage
    for j in range(1, config.stages + 1):
        learn = [f for person in people_facts[config.people :] for f in person if f.valid_from == j]
        update = [
            ChangeRecord(j, "update", Fact(f.id, f.subject, f.relation, _new_object(change_rng, relations[f.relation], f.object), j), f.object)
            for f in chunk(updated, config.update_per_stage, j)
        ]
        edit = [
            ChangeRecord(j, "edit", Fact(f.id, f.subject, f.relation, _new_object(change_rng, relations[f.relation], f.object), j), f.object)
            for f in chunk(others[:n_edit], config.edit_per_stage, j)
        ]
        forget = chunk(others[n_edit:], config.forget_per_stage, j)
        stages.append(Change(j, tuple(learn), tuple(update), tuple(edit), tuple(forget)))

    heldout: dict[int, tuple[str, ...]] = {}
    if config.corpus_per_stage:
        for j in range(1, config.stages + 1):
            docs = domain_documents(_part_rng(config.seed, f"corpus-{j}"), j, config.corpus_per_stage + config.corpus_heldout)
            stages[j - 1] = replace(stages[j - 1], corpus=tuple(docs[: config.corpus_per_stage]))
            heldout[j] = tuple(docs[config.corpus_per_stage :])

    general = general_sentences(_part_rng(config.seed, "general"), config.general_train + config.general_heldout)
    background = person_names(_part_rng(config.seed, "background"), config.background_people, BACKGROUND_FIRST_HEADS, BACKGROUND_LAST_HEADS)
    bridge = {(f.relation, f.subject): f.object for f in about_objects}
    bios = background_biographies(_part_rng(config.seed, "background-facts"), relations, background, bridge, config.stages)
    stream = Stream(
        relations=relations,
        base=tuple(base + about_objects),
        stages=tuple(stages),
        general_train=tuple(general[: config.general_train]),
        general_heldout=tuple(general[config.general_train :]),
        meta=asdict(config),
        background=tuple(bios),
        qa_subjects=frozenset(qa),
        domain_heldout=heldout,
    )
    check_probe_words(stream, config.min_probe_word_count)
    return stream
