"""WordPiece and SentencePiece tokenizers behind one interface.

Both classes expose `vocab_size`, the special ids (`pad_id`, `cls_id`, `sep_id`, `mask_id`,
`unk_id`), `encode`, `encode_batch`, `id_to_token`, `token_to_id`, `decode`, `is_continuation`
(for whole-word masking) and `__call__`, which builds `[CLS] A [SEP] (B [SEP])` model inputs as
int32 NumPy arrays. WordPiece runs on the Rust `tokenizers` library, so ids equal transformers'
`BertTokenizerFast` on the same vocab.
"""

from __future__ import annotations

import abc
import json
import unicodedata
from collections.abc import Sequence

import numpy as np
from etils import epath

SPECIAL_TOKENS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
}
DEFAULT_MODEL_MAX_LENGTH = 512


def _find_specials(path, token_to_id) -> dict[str, int]:
    """Maps pad/unk/cls/sep/mask to ids, or raises naming the vocab and the missing token."""
    ids = {}
    for name, candidates in SPECIAL_TOKENS.items():
        found = [token_to_id(t) for t in candidates if token_to_id(t) is not None]
        if not found:
            raise ValueError(f"{path}: vocabulary has no {candidates[0]} token (needed for BERT)")
        ids[name] = found[0]
    return ids


def truncate_pair_lengths(n1: int, n2: int, max_tokens: int) -> tuple[int, int]:
    """Lengths kept by "longest_first" truncation (as the Rust `tokenizers` library does it).

    The longer sequence is cut until both are equal, then both alternately; with an odd budget
    the first sequence of a pair keeps the extra token only when it was the longer one.
    """
    if n1 + n2 <= max_tokens:
        return n1, n2
    if n1 > n2:
        n2_keep = min(n2, max_tokens // 2)
        return max_tokens - n2_keep, n2_keep
    n1_keep = min(n1, max_tokens // 2)
    return n1_keep, max_tokens - n1_keep


class _Tokenizer(abc.ABC):
    """Shared `__call__`: assembling, truncating and padding BERT inputs from encoded ids."""

    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    unk_id: int
    # Separators between the two texts of a pair (RoBERTa's `<s> A </s></s> B </s>` has two) and the second
    # text's token type (RoBERTa has one type).
    pair_separators: int = 1
    second_type: int = 1

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""

    def encode_words(self, words: Sequence[str], *, space_before_first: bool) -> list[list[int]]:
        """Token ids of each word of a whitespace-split text, as the text's own encoding splits them, so token i
        of the concatenation belongs to word `owner[i]` (CoNLL's labels, SQuAD's answer spans).
        `space_before_first`: the first word also follows a space (a sentence inside a document); only a
        tokenizer that encodes the space into its pieces (byte-level BPE) reads it."""
        return self.encode_batch(list(words))

    def _set_specials(self, ids: dict[str, int]) -> None:
        self.pad_id, self.unk_id = ids["pad"], ids["unk"]
        self.cls_id, self.sep_id, self.mask_id = ids["cls"], ids["sep"], ids["mask"]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        max_length: int | None = None,
        padding: str = "longest",
        truncation: bool = True,
    ) -> dict[str, np.ndarray]:
        """Returns int32 `input_ids`, `token_type_ids`, `attention_mask`, each [batch, length]."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(pairs, str):
            pairs = [pairs]
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if max_length is None:
            if padding == "max_length":
                raise ValueError("padding='max_length' needs max_length")
            max_length = self.model_max_length
        firsts = self.encode_batch(list(texts))
        seconds = self.encode_batch(list(pairs)) if pairs is not None else [None] * len(firsts)
        rows = []
        for a, b in zip(firsts, seconds, strict=True):
            n_special = 2 if b is None else 2 + self.pair_separators
            budget = max(max_length - n_special, 0)
            if truncation:
                if b is None:
                    a = a[:budget]
                else:
                    n1, n2 = truncate_pair_lengths(len(a), len(b), budget)
                    a, b = a[:n1], b[:n2]
            ids = [self.cls_id, *a, self.sep_id]
            types = [0] * len(ids)
            if b is not None:
                ids += [self.sep_id] * (self.pair_separators - 1) + [*b, self.sep_id]
                types += [self.second_type] * (len(b) + self.pair_separators)
            rows.append((ids, types))
        length = (
            max_length if padding == "max_length" else max((len(r[0]) for r in rows), default=0)
        )
        out = {
            "input_ids": np.full((len(rows), length), self.pad_id, np.int32),
            "token_type_ids": np.zeros((len(rows), length), np.int32),
            "attention_mask": np.zeros((len(rows), length), np.int32),
        }
        for i, (ids, types) in enumerate(rows):
            n = min(len(ids), length)  # only reachable with truncation=False and max_length padding
            out["input_ids"][i, :n] = ids[:n]
            out["token_type_ids"][i, :n] = types[:n]
            out["attention_mask"][i, :n] = 1
        return out


class WordPieceTokenizer(_Tokenizer):
    """BERT WordPiece on the Rust `tokenizers` library (same ids as BertTokenizerFast)."""

    def __init__(self, tokenizer, path: str = "<memory>", model_max_length: int | None = None):
        """Wraps a `tokenizers.Tokenizer` whose model is WordPiece; specials must be in the vocab."""
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.path = str(path)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._set_specials(_find_specials(path, tokenizer.token_to_id))
        self.model_max_length = model_max_length or DEFAULT_MODEL_MAX_LENGTH
        self._continuation = None

    @classmethod
    def from_vocab_file(
        cls,
        path,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int | None = None,
    ) -> WordPieceTokenizer:
        """Builds the tokenizer from a one-token-per-line `vocab.txt` (local or gs://)."""
        from tokenizers.implementations import BertWordPieceTokenizer

        path = epath.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocab file not found")
        try:
            tokens = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}: not a WordPiece vocab.txt (byte {error.start} is not UTF-8 text); give a vocab.txt "
                "(one token per line), a tokenizer directory or a SentencePiece .model"
            ) from error
        # Same rule as the original BERT loader: line number is the id, surrounding whitespace
        # stripped; a later duplicate keeps the later line's id, as transformers' load_vocab does.
        vocab = {tok.strip(): i for i, tok in enumerate(tokens)}
        if not vocab or (len(vocab) == 1 and "" in vocab):
            raise ValueError(f"{path}: vocab file is empty")
        bert = BertWordPieceTokenizer(
            vocab,
            lowercase=do_lower_case,
            strip_accents=strip_accents,
            handle_chinese_chars=tokenize_chinese_chars,
        )
        return cls(bert._tokenizer, path, model_max_length)

    @classmethod
    def from_tokenizer_json(cls, path, model_max_length: int | None = None) -> WordPieceTokenizer:
        """Loads a Hugging Face `tokenizer.json` whose model is WordPiece."""
        from tokenizers import Tokenizer

        path = epath.Path(path)
        text = path.read_text(encoding="utf-8")
        model_type = json.loads(text).get("model", {}).get("type")
        if model_type != "WordPiece":
            raise ValueError(f"{path}: tokenizer model is {model_type!r}, expected 'WordPiece'")
        return cls(Tokenizer.from_str(text), path, model_max_length)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def basic_tokenize(self, text: str) -> list[str]:
        """The words WordPiece starts from: text normalized (lower case, accents, control
        characters as configured) and split on whitespace and punctuation, as the original's
        BasicTokenizer; SQuAD maps predicted pieces back to the original text through it."""
        normalized = self._tok.normalizer.normalize_str(text) if self._tok.normalizer else text
        if self._tok.pre_tokenizer is None:
            return normalized.split()
        return [word for word, _ in self._tok.pre_tokenizer.pre_tokenize_str(normalized)]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def is_continuation(self) -> np.ndarray:
        """Bool [vocab_size]: True for pieces that continue a word ("##" prefix)."""
        if self._continuation is None:
            flags = np.zeros(self.vocab_size, bool)
            for token, i in self._tok.get_vocab(with_added_tokens=True).items():
                flags[i] = token.startswith("##")
            self._continuation = flags
        return self._continuation


class SentencePieceTokenizer(_Tokenizer):
    """A SentencePiece model with BERT's special tokens as pieces ([PAD]/<pad>, [CLS], ...)."""

    def __init__(
        self, path, model_max_length: int | None = None, do_lower_case: bool | None = None
    ):
        """Loads a `.model` file; `do_lower_case` lower-cases text and strips its accents before encoding
        (ALBERT-style models need it). Unset, it follows the model: True when its normalizer case-folds
        (`*_cf` rules, as `bert_jax.data.vocab` writes for lower-cased training)."""
        path = epath.Path(path)
        self._sp = load_sentencepiece(path)
        self.path = str(path)
        if do_lower_case is None:
            do_lower_case = _normalizer_name(path.read_bytes()).endswith("_cf")
        self.do_lower_case = do_lower_case
        self.vocab_size = self._sp.get_piece_size()
        unk = self._sp.unk_id()

        def token_to_id(piece):
            i = self._sp.piece_to_id(piece)
            return None if i == unk and piece != self._sp.id_to_piece(unk) else i

        self._token_to_id = token_to_id
        self._set_specials(_find_specials(path, token_to_id))
        self.model_max_length = model_max_length or DEFAULT_MODEL_MAX_LENGTH
        self._continuation = None

    def _prepare(self, text: str) -> str:
        # Lower-cased models also lose accents (NFKD, combining marks dropped), as BERT's uncased WordPiece,
        # google-research/albert's `preprocess_text` and transformers' AlbertTokenizer do.
        if not self.do_lower_case:
            return text
        text = unicodedata.normalize("NFKD", text)
        return "".join(c for c in text if not unicodedata.combining(c)).lower()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(self._prepare(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode([self._prepare(t) for t in texts], num_threads=1)

    def id_to_token(self, i: int) -> str | None:
        return self._sp.id_to_piece(int(i)) if 0 <= int(i) < self.vocab_size else None

    def token_to_id(self, token: str) -> int | None:
        return self._token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self._sp.decode(ids)

    @property
    def is_continuation(self) -> np.ndarray:
        """Bool [vocab_size]: True for pieces without the word-start marker "▁"."""
        if self._continuation is None:
            flags = np.array(
                [not self._sp.id_to_piece(i).startswith("\u2581") for i in range(self.vocab_size)]
            )
            flags[list(self.special_ids)] = False
            self._continuation = flags
        return self._continuation


class ByteLevelBPETokenizer(_Tokenizer):
    """GPT-2's byte-level BPE as RoBERTa uses it (`vocab.json` + `merges.txt`, on the Rust `tokenizers`
    library): `<s>`, `</s>`, `<pad>`, `<unk>`, `<mask>` as cls/sep/pad/unk/mask, pairs as
    `<s> A </s></s> B </s>` with one token type (transformers' RobertaTokenizer)."""

    pair_separators = 2
    second_type = 0
    SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}

    def __init__(self, vocab_file, merges_file, model_max_length: int | None = None):
        import tokenizers

        vocab_file, merges_file = epath.Path(vocab_file), epath.Path(merges_file)
        for f in (vocab_file, merges_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f}: missing (a byte-level BPE needs vocab.json and merges.txt)"
                )
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = []
        for line in merges_file.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#version"):
                pair = tuple(line.split(" "))
                if len(pair) != 2:
                    raise ValueError(f"{merges_file}: line {line!r} is not one merge of two tokens")
                merges.append(pair)
        self._tok = tokenizers.ByteLevelBPETokenizer(vocab, merges)
        self.path, self.merges_path = str(vocab_file), str(merges_file)
        self.vocab_size = self._tok.get_vocab_size()
        ids = {}
        for name, token in self.SPECIALS.items():
            if token not in vocab:
                raise ValueError(
                    f"{vocab_file}: vocabulary has no {token} token (needed for RoBERTa)"
                )
            ids[name] = vocab[token]
        self._set_specials(ids)
        self._tok.add_special_tokens(list(self.SPECIALS.values()))
        self.model_max_length = model_max_length or DEFAULT_MODEL_MAX_LENGTH
        self._continuation = None

    @classmethod
    def train(
        cls, files: Sequence[str], directory, vocab_size: int = 50265, min_frequency: int = 2
    ):
        """Trains a byte-level BPE on text files and writes `vocab.json` + `merges.txt` into `directory`,
        with fairseq's specials first (<s>=0, <pad>=1, </s>=2, <unk>=3) and <mask>; returns the tokenizer."""
        import tokenizers

        bpe = tokenizers.ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bpe.train([str(f) for f in files], vocab_size, min_frequency, special_tokens=specials)
        epath.Path(directory).mkdir(parents=True, exist_ok=True)
        bpe.save_model(str(directory))
        return cls(epath.Path(directory) / "vocab.json", epath.Path(directory) / "merges.txt")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, words: Sequence[str], *, space_before_first: bool) -> list[list[int]]:
        """Each word with the space before it (all but the first, unless `space_before_first`): the pieces of
        " word" are what the running text gives it ("Ġword"), not those of a text that starts with it."""
        spaced = [" " + w if i or space_before_first else w for i, w in enumerate(words)]
        return self.encode_batch(spaced)

    def basic_tokenize(self, text: str) -> list[str]:
        """The words answers are aligned on: byte-level BPE changes no character, so whitespace words."""
        return text.split()

    def span_text(self, ids: Sequence[int]) -> str:
        """The text of consecutive tokens (a predicted answer), without the leading space marker."""
        return " ".join(self._tok.decode([int(i) for i in ids], skip_special_tokens=True).split())

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def is_continuation(self) -> np.ndarray:
        """Bool [vocab_size]: True for tokens without the space marker "Ġ" (inside a whitespace word: "cat."
        is "Ġcat" + "."; a text's first word has no marker either, and follows <s>, a special token)."""
        if self._continuation is None:
            tokens = [self._tok.id_to_token(i) or "" for i in range(self.vocab_size)]
            flags = np.array([not t.startswith("\u0120") for t in tokens])
            flags[list(self.special_ids)] = False
            self._continuation = flags
        return self._continuation


def load_sentencepiece(path):
    """The `sentencepiece` processor of a `.model` file; one line naming the path when it is missing or not one."""
    import sentencepiece as spm

    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SentencePiece model not found")
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except RuntimeError as e:
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
    return processor


def _normalizer_name(model_bytes: bytes) -> str:
    """The normalization rule stored in a SentencePiece model ("" if unreadable)."""
    from sentencepiece import sentencepiece_model_pb2

    try:
        return sentencepiece_model_pb2.ModelProto.FromString(model_bytes).normalizer_spec.name
    except Exception:  # noqa: BLE001 - an exotic model: no case-folding known
        return ""


def load_tokenizer(
    path, do_lower_case: bool | None = None
) -> WordPieceTokenizer | SentencePieceTokenizer:
    """Loads a tokenizer from a HF-layout directory, a `vocab.txt`, or a SentencePiece `.model`.

    In a directory, `tokenizer.json` (WordPiece) wins, then `vocab.txt` with the options of
    `tokenizer_config.json`, then a `*.model` file. `do_lower_case`, when given, overrides the
    config (a bare vocab.txt defaults to lower-casing, like BertTokenizer; a .model lower-cases
    when its normalizer case-folds, as models trained by `bert_jax.data.vocab` with lower-casing).
    """
    path = epath.Path(path)
    if path.is_dir():
        config = {}
        if (path / "tokenizer_config.json").exists():
            config = json.loads((path / "tokenizer_config.json").read_text())
        max_len = config.get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 10**6 else None
        if (path / "vocab.json").exists() or (path / "merges.txt").exists():
            return ByteLevelBPETokenizer(path / "vocab.json", path / "merges.txt", max_len)
        if (path / "tokenizer.json").exists() and do_lower_case is None:
            return WordPieceTokenizer.from_tokenizer_json(path / "tokenizer.json", max_len)
        if (path / "vocab.txt").exists():
            return WordPieceTokenizer.from_vocab_file(
                path / "vocab.txt",
                do_lower_case=config.get("do_lower_case", True)
                if do_lower_case is None
                else do_lower_case,
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                model_max_length=max_len,
            )
        models = sorted(path.glob("*.model"))
        if models:
            lower = config.get("do_lower_case") if do_lower_case is None else do_lower_case
            return SentencePieceTokenizer(models[0], max_len, lower)
        raise FileNotFoundError(f"{path}: no tokenizer.json, vocab.txt or *.model in directory")
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path, do_lower_case=do_lower_case)
    if path.suffix == ".json":
        return WordPieceTokenizer.from_tokenizer_json(path)
    try:
        return WordPieceTokenizer.from_vocab_file(
            path, do_lower_case=True if do_lower_case is None else do_lower_case
        )
    except (
        TypeError
    ) as error:  # the tokenizers library's word for a vocab without BERT's special tokens
        raise ValueError(f"{path}: not a WordPiece vocab.txt ({error})") from error
