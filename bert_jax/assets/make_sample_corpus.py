"""Writes the bundled sample corpus: invented, templated English documents (all text original).

Each document follows one invented subject (a town, a person, an animal or a machine) through
several sentences, so a tiny BERT can learn real regularities: agreement, recurring names within a
document (next-sentence prediction), fixed collocations (masked-LM). Output is the original BERT
format: one sentence per line, a blank line between documents.

    python -m bert_jax.assets.make_sample_corpus  # rewrites sample_corpus*.txt next to this file
"""

import pathlib

import numpy as np

SYLLABLES = "ka lo mi ren tor vel sa dun bri ost mar fen gal hul pri zan cor dell win ash".split()
COLOURS = "red blue green yellow grey white black brown orange silver".split()
ADJECTIVES = "quiet busy old small large cold warm bright narrow famous ancient modern".split()
TRADES = "baker farmer teacher sailor miller weaver doctor painter builder fisher".split()
ANIMALS = "fox owl heron badger otter beetle falcon hare salmon wolf".split()
FOODS = "bread apples fish cheese honey grain beans plums nuts rice".split()
SEASONS = "spring summer autumn winter".split()
MACHINES = "pump clock loom engine mill crane press kiln".split()
NUMBERS = "two three four five six seven eight nine ten twelve".split()


def _name(rng) -> str:
    return "".join(rng.choice(SYLLABLES, rng.integers(2, 4))).capitalize()


def _town(rng) -> list[str]:
    town, river, trade = _name(rng), _name(rng), rng.choice(TRADES)
    adj, food, season = rng.choice(ADJECTIVES), rng.choice(FOODS), rng.choice(SEASONS)
    n = rng.choice(NUMBERS)
    pool = [
        f"{town} is a {adj} town on the river {river}.",
        f"Most people in {town} work as a {trade} or trade in {food}.",
        f"Every {season} the market of {town} sells {food} from the farms along the {river}.",
        f"The river {river} floods in {season}, so the houses of {town} stand on stone.",
        f"{town} has {n} bridges, and the oldest one is painted {rng.choice(COLOURS)}.",
        f"Visitors say that {town} is {rng.choice(ADJECTIVES)} in {rng.choice(SEASONS)}.",
        f"A {trade} from {town} once sailed down the {river} to the sea.",
        f"The school of {town} teaches {n} subjects to the children of the valley.",
        f"Near {town}, the {rng.choice(ANIMALS)} lives in the reeds by the {river}.",
        f"In the old records, {town} is named as a place of {food} and {trade}s.",
    ]
    return [pool[0], *rng.permutation(pool[1:])[: rng.integers(4, 9)]]


def _person(rng) -> list[str]:
    first, town, trade = _name(rng), _name(rng), rng.choice(TRADES)
    pronoun, poss = [("she", "her"), ("he", "his")][rng.integers(2)]
    food, animal = rng.choice(FOODS), rng.choice(ANIMALS)
    n = rng.choice(NUMBERS)
    pool = [
        f"{first} was born in {town} and became a {trade}.",
        f"As a child, {first} liked {food} and watched the {animal} in the fields.",
        f"{pronoun.capitalize()} worked as a {trade} for {n} years.",
        f"Later {first} moved away from {town}, but {pronoun} often came back in {rng.choice(SEASONS)}.",
        f"{poss.capitalize()} house had a {rng.choice(COLOURS)} door and a garden of {food}.",
        f"People in {town} still tell stories about {first} the {trade}.",
        f"{first} wrote {n} letters to {poss} brother about the {animal}.",
        f"When {pronoun} was old, {first} taught young people to be a {trade}.",
        f"{poss.capitalize()} friends said that {first} was {rng.choice(ADJECTIVES)} and kind.",
    ]
    return [pool[0], *rng.permutation(pool[1:])[: rng.integers(4, 8)]]


def _animal(rng) -> list[str]:
    animal, colour, food = rng.choice(ANIMALS), rng.choice(COLOURS), rng.choice(FOODS)
    place, season, n = _name(rng), rng.choice(SEASONS), rng.choice(NUMBERS)
    pool = [
        f"The {colour} {animal} is a rare animal of the {place} hills.",
        f"The {animal} eats {food} and small insects.",
        f"In {season}, the {colour} {animal} raises {n} young.",
        f"A {animal} can live for {n} years in the wild.",
        f"Farmers near {place} say the {animal} brings luck in {season}.",
        f"The {animal} sleeps during the day and hunts at night.",
        f"Its {colour} fur makes the {animal} hard to see in the {rng.choice(ADJECTIVES)} forest.",
        f"Scientists have counted {n} hundred of the {colour} {animal} near {place}.",
    ]
    return [pool[0], *rng.permutation(pool[1:])[: rng.integers(3, 7)]]


def _machine(rng) -> list[str]:
    machine, builder, town = rng.choice(MACHINES), _name(rng), _name(rng)
    colour, n = rng.choice(COLOURS), rng.choice(NUMBERS)
    pool = [
        f"The {machine} of {town} was built by {builder} long ago.",
        f"It has {n} wheels and a {colour} frame of iron and wood.",
        f"The {machine} runs on water from the stream above {town}.",
        f"{builder} spent {n} years making the {machine} work.",
        f"Every {rng.choice(SEASONS)} the people of {town} clean and oil the {machine}.",
        f"Today the {machine} is {rng.choice(ADJECTIVES)} but it still works.",
        f"Children come to {town} to see how the {machine} turns.",
        f"A copy of the {machine} stands in the museum of {_name(rng)}.",
    ]
    return [pool[0], *rng.permutation(pool[1:])[: rng.integers(3, 7)]]


def make_documents(num_documents: int, seed: int) -> list[list[str]]:
    """Returns `num_documents` documents, each a list of sentences."""
    rng = np.random.default_rng(seed)
    kinds = (_town, _person, _animal, _machine)
    return [kinds[rng.integers(len(kinds))](rng) for _ in range(num_documents)]


def write_corpus(path: pathlib.Path, documents: list[list[str]]) -> None:
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")


if __name__ == "__main__":
    here = pathlib.Path(__file__).parent
    write_corpus(here / "sample_corpus.txt", make_documents(1500, seed=1))
    write_corpus(here / "sample_corpus_eval.txt", make_documents(100, seed=2))
