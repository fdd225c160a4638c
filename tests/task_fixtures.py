"""Synthetic task data with learnable rules, in the official file formats, and a vocab for them."""

import csv
import json

import numpy as np

FILLER = [f"w{i}" for i in range(40)]
PEOPLE = [f"p{i}" for i in range(8)]
PLACES = [f"l{i}" for i in range(8)]
# Second words of multi-word entities: surnames (I-PER) and place suffixes (I-LOC).
SURNAMES = [f"s{i}" for i in range(8)]
SUFFIXES = [f"c{i}" for i in range(8)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "?", ".", ",", "good", *FILLER, *PEOPLE,
         *PLACES, *SURNAMES, *SUFFIXES]  # fmt: skip


def write_vocab(directory) -> str:
    path = directory / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return str(path)


def write_squad(directory, version: str, n_train: int, n_dev: int, seed: int = 0) -> None:
    """Contexts of filler words with one person word; the question asks for it; the answer is it.
    v2.0: a third of the questions have no person word and no answer."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        paragraphs = []
        for i in range(n):
            words = list(rng.choice(FILLER, size=rng.integers(6, 14)))
            impossible = version == "2.0" and i % 3 == 0
            qa = {"id": f"{split}{i}", "question": "what ?", "answers": []}
            if not impossible:
                position = int(rng.integers(0, len(words)))
                words.insert(position, str(rng.choice(PEOPLE)))
            context = " ".join(words) + " ."
            if not impossible:
                start = len(" ".join(words[:position])) + (1 if position else 0)
                qa["answers"] = [{"text": words[position], "answer_start": start}]
            if version == "2.0":
                qa["is_impossible"] = impossible
            paragraphs.append({"context": context, "qas": [qa]})
        data = {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}
        (directory / f"{split}-v{version}.json").write_text(json.dumps(data))


def write_swag(directory, n_train: int, n_dev: int, seed: int = 0) -> None:
    """The right ending is the one with "good" in it."""
    rng = np.random.default_rng(seed)
    header = ["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
              "ending0", "ending1", "ending2", "ending3", "label"]  # fmt: skip
    for name, n in (("train.csv", n_train), ("val.csv", n_dev)):
        with open(directory / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i in range(n):
                sent1 = " ".join(rng.choice(FILLER, size=4))
                sent2 = str(rng.choice(PEOPLE))
                endings = [" ".join(rng.choice(FILLER, size=3)) for _ in range(4)]
                label = int(rng.integers(0, 4))
                endings[label] = "good " + endings[label]
                writer.writerow(
                    [f"v{i}", i, f"{sent1} {sent2}", sent1, sent2, "gold", *endings, label]
                )


def write_conll(directory, n_train: int, n_dev: int, seed: int = 0) -> None:
    """Entities of one or two words between filler words, IOB2: a person is a first name (B-PER) and
    maybe a surname (I-PER); a place is a place word (B-LOC) and maybe a suffix (I-LOC)."""
    rng = np.random.default_rng(seed)
    for name, n in (("train.txt", n_train), ("valid.txt", n_dev)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            for _ in range(rng.integers(1, 4)):
                lines += [f"{w} NN O O" for w in rng.choice(FILLER, size=rng.integers(1, 3))]
                kind = str(rng.choice(["PER", "LOC"]))
                first, second = (PEOPLE, SURNAMES) if kind == "PER" else (PLACES, SUFFIXES)
                lines.append(f"{rng.choice(first)} NNP O B-{kind}")
                if rng.random() < 0.5:
                    lines.append(f"{rng.choice(second)} NNP O I-{kind}")
            lines.append("")
        (directory / name).write_text("\n".join(lines) + "\n")
