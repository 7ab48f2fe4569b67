"""Text data: tokenisers and the ``text`` / ``fortunes`` sources.

A text example is a row of ``max_length`` token ids (int64): the tokens of one line (or one fortune, or one
fixed-length window of the stream), then an end-of-sequence token (``line`` mode only), then padding. The
padding id comes from the tokeniser and must equal ``model.pad_id``: padded positions never count in a
likelihood. Three tokenisers, each with the same ids layout (``eos_id``, ``pad_id``) and a JSON form that the
training job writes into the run directory (``tokenizer.json``) so a trained model decodes its own samples:

* ``byte``: the 256 UTF-8 byte values, then end-of-sequence (256) and padding (257). Nothing to build; every
  text is representable.
* ``char``: the characters of the training split (sorted), then unknown, end-of-sequence and padding.
* ``bpe``: byte-level BPE trained on the training split with Hugging Face ``tokenizers``; exact round trip.

Bad input is handled as ``DataConfig`` says and counted: text that is not UTF-8 (``text_errors``: error,
replace with U+FFFD, or skip the example), empty examples (skipped), examples longer than ``max_length``
(``too_long``: truncate or skip). Examples that repeat an earlier one (the same text after whitespace is
normalised) are removed before the split (``dedupe``, on by default), so that no text falls on both sides.
The counts are printed and kept in :attr:`TextData.notes`.

Predefined splits: a folder holding ``train.txt`` / ``valid.txt`` (or ``val.txt``) / ``test.txt`` (PTB's
``ptb.train.txt`` and WikiText's ``wiki.train.tokens`` too), or ``data.train_path`` / ``val_path`` /
``test_path``; the vocabulary is then built from the training file.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .sources import SOURCES, DataError, RawData, Source

FORTUNES_PATH = "/usr/share/games/fortunes"
TOKENIZER_NAME = "tokenizer.json"


# ---------------------------------------------------------------------------------------------------- tokenisers


class Tokenizer:
    """Token ids for strings. Subclasses set ``kind``, ``unit`` (what bits per unit counts: byte, char, token)
    and ``vocab_size``; the last two ids are end-of-sequence and padding."""

    kind = ""
    unit = "token"
    vocab_size = 0

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of one row of ids: up to the first end-of-sequence token, padding dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._decode([i for i in ids if i != self.pad_id])

    def decode_batch(self, x: torch.Tensor) -> list[str]:
        """(B, T) ids -> B strings."""
        return [self.decode(row) for row in x.reshape(x.shape[0], -1).long().cpu()]

    def count_units(self, text: str) -> int:
        """How many of ``unit`` the text holds (UTF-8 bytes, characters or tokens)."""
        if self.unit == "byte":
            return len(text.encode("utf-8"))
        if self.unit == "char":
            return len(text)
        return len(self.encode(text))

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False))
        return path


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255, end-of-sequence 256, padding 257."""

    kind, unit, vocab_size = "byte", "byte", 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """Characters of the training split (sorted by code point), then unknown, end-of-sequence, padding."""

    kind, unit = "char", "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + 3
        self.unk_id = len(self.chars)

    @classmethod
    def fit(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(chars)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.unk_id) for c in text]

    def _decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "\ufffd" for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face ``tokenizers``): decode(encode(s)) == s for every string. The special
    tokens are moved to the end of the ids (end-of-sequence, then padding) like the other tokenisers."""

    kind, unit = "bpe", "token"

    def __init__(self, hf):
        self.hf = hf
        self.vocab_size = hf.get_vocab_size()
        # the trainer puts the special tokens first: ids 0 (<eos>) and 1 (<pad>); we shift them to the end
        self._shift = 2

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<eos>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(list(texts), trainer)
        return cls(hf)

    @property
    def hf(self):
        return self._hf

    @hf.setter
    def hf(self, hf) -> None:
        # "<eos>" or "<pad>" written in a text are its characters, never the special ids (which would come out
        # of encode as -2 and -1 after the shift below)
        hf.encode_special_tokens = True
        self._hf = hf

    def encode(self, text: str) -> list[int]:
        return [i - self._shift for i in self.hf.encode(text).ids]

    def _decode(self, ids: list[int]) -> str:
        return self.hf.decode([i + self._shift for i in ids if i < self.vocab_size - 2])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "hf": json.loads(self.hf.to_str())}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(d["hf"])))
    raise DataError(f"unknown tokenizer kind {kind!r}; expected byte, char or bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokeniser saved with :meth:`Tokenizer.save` (``RUN_DIR/tokenizer.json``)."""
    path = Path(path)
    try:
        return tokenizer_from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{path} is not a saved tokenizer ({e})") from None


def run_tokenizer(run_dir: str | Path, data_config) -> Tokenizer:
    """The tokeniser of a run: ``RUN_DIR/tokenizer.json``, or the byte tokeniser (nothing to save) if absent."""
    path = Path(run_dir) / TOKENIZER_NAME
    if path.is_file():
        return load_tokenizer(path)
    if data_config.tokenizer == "byte":
        return ByteTokenizer()
    raise DataError(f"{path} is missing: the run's {data_config.tokenizer} tokenizer cannot decode its samples")


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class TextData(RawData):
    """:class:`RawData` of token ids ``x`` (N, max_length) int64, with the tokeniser and the counts of what
    was skipped, replaced or truncated (``notes``, one line each)."""

    tokenizer: Tokenizer | None = None
    notes: list[str] = field(default_factory=list)
    duplicates: int = 0  # examples removed by dedupe


def _decode_bytes(raw: bytes, errors: str, where: str, counts: dict) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "error":
            raise DataError(
                f"{where} is not UTF-8 ({e.reason} at byte {e.start}); convert it to UTF-8, or set "
                "data.text_errors to replace (U+FFFD) or skip"
            ) from None
        counts["not_utf8"] += 1
        return raw.decode("utf-8", errors="replace") if errors == "replace" else None


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"data.path {path} does not exist; give a text file or a folder of .txt files")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path} holds no .txt files")
    return files


def _fortune_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise DataError(
            f"{path} does not exist: install Debian's fortunes package (apt-get install fortunes) or set data.path "
            "to a folder of fortune files"
        )
    # .dat are strfile indexes, .u8 links to the same texts; folders (off/) hold rot13-encoded sets
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise DataError(f"{path} holds no fortune files")
    return files


def read_examples(config) -> tuple[list[str], dict]:
    """The raw text examples of a ``text`` or ``fortunes`` source, and counts of what was dropped or fixed."""
    counts = {"empty": 0, "not_utf8": 0}
    examples: list[str] = []
    if config.source == "fortunes":
        for f in _fortune_files(Path(config.path or FORTUNES_PATH)):
            for i, chunk in enumerate(f.read_bytes().replace(b"\r\n", b"\n").split(b"\n%\n")):
                text = _decode_bytes(chunk, config.text_errors, f"{f} (fortune {i + 1})", counts)
                if text is None:
                    continue
                text = text.strip("\n")
                if text.endswith("\n%"):  # the file's last separator, without its newline
                    text = text[:-2].rstrip("\n")
                if not text.strip() or text == "%":
                    counts["empty"] += 1
                    continue
                examples.append(text)
        return examples, counts
    if config.path is None:
        raise DataError("source text needs data.path: a text file or a folder of .txt files")
    for f in _text_files(Path(config.path).expanduser()):
        data = f.read_bytes()
        if config.text_unit == "window":
            text = _decode_bytes(data, config.text_errors, str(f), counts)
            if text:
                examples.extend(_windows(text, config.max_length, by_bytes=config.tokenizer == "byte"))
            continue
        for i, line in enumerate(data.splitlines()):
            text = _decode_bytes(line, config.text_errors, f"{f} line {i + 1}", counts)
            if text is None:
                continue
            if not text.strip():
                counts["empty"] += 1
                continue
            examples.append(text)
    return examples, counts


def _windows(text: str, n: int, by_bytes: bool) -> list[str]:
    """``text`` cut into consecutive windows of ``n`` characters, or (``by_bytes``) of at most ``n`` UTF-8
    bytes, each cut moved back to a character boundary so that no character is split."""
    if not by_bytes:
        return [text[i : i + n] for i in range(0, len(text), n)]
    data, out, i = text.encode("utf-8"), [], 0
    while i < len(data):
        end = j = min(i + n, len(data))
        while i < j < len(data) and (data[j] & 0xC0) == 0x80:  # a continuation byte: back off
            j -= 1
        if j == i:  # one character longer than n bytes: kept whole
            j = end
            while j < len(data) and (data[j] & 0xC0) == 0x80:
                j += 1
        out.append(data[i:j].decode("utf-8"))
        i = j
    return out


def build_tokenizer(config, train_texts: Sequence[str]) -> Tokenizer:
    if config.tokenizer == "byte":
        return ByteTokenizer()
    if config.tokenizer == "char":
        return CharTokenizer.fit(train_texts)
    return BPETokenizer.fit(train_texts, config.bpe_vocab_size)


def encode_rows(
    texts: Sequence[str], tokenizer: Tokenizer, max_length: int, too_long: str, add_eos: bool
) -> tuple[torch.Tensor, list[int], int]:
    """(N', max_length) int64 ids padded with ``tokenizer.pad_id``; the indices of the texts kept; and how
    many were too long (truncated, or skipped when ``too_long`` is ``skip``). The end-of-sequence token counts
    towards ``max_length``; a truncated example keeps it, so every line example ends with one."""
    room = max_length - 1 if add_eos else max_length
    rows, kept, n_long = [], [], 0
    for i, t in enumerate(texts):
        ids = tokenizer.encode(t)
        if len(ids) > room:
            n_long += 1
            if too_long == "skip":
                continue
            ids = ids[:room]
        if add_eos:
            ids = ids + [tokenizer.eos_id]
        rows.append(ids + [tokenizer.pad_id] * (max_length - len(ids)))
        kept.append(i)
    x = torch.tensor(rows, dtype=torch.long) if rows else torch.empty((0, max_length), dtype=torch.long)
    return x, kept, n_long


def normalise_whitespace(text: str) -> str:
    """``text`` with every run of whitespace made one space and none at the ends: the key of :func:`dedupe`."""
    return " ".join(text.split())


def dedupe(texts: Sequence[str]) -> tuple[list[str], int]:
    """The texts without those equal to an earlier one after :func:`normalise_whitespace` (the first of each
    kept, in order), and how many were removed."""
    seen: set[str] = set()
    out = []
    for t in texts:
        key = normalise_whitespace(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out, len(texts) - len(out)


def read_text(config, train_rows: Callable[[int], torch.Tensor], paths: dict[str, Path] | None = None) -> TextData:
    """Read a ``text`` / ``fortunes`` source into token ids (N, max_length).

    ``train_rows(n)`` gives the rows of n examples that the loader will put in the training split: the char
    and BPE vocabularies are built from those texts only. ``paths`` (predefined splits: ``train`` and
    ``val`` and/or ``test``): the training file is read as the source, the others are encoded with its
    tokeniser into ``val_x`` / ``test_x``.
    """
    where = f"source {config.source}" + (f" ({config.path})" if config.path else "")
    held_out: dict[str, list[str]] = {}
    paths = paths or {}  # no predefined splits
    if paths:
        where = f"source {config.source} ({paths['train']})"
        texts, counts = read_examples(dataclasses.replace(config, path=str(paths["train"])))
        for name in ("val", "test"):
            if name in paths:
                held_out[name], more = read_examples(dataclasses.replace(config, path=str(paths[name])))
                counts = {k: counts[k] + more[k] for k in counts}
    else:
        texts, counts = read_examples(config)
    if not texts:
        raise DataError(f"{where}: no text examples found ({counts['empty']} empty skipped)")
    notes = []
    n_dup = 0
    # the examples some split is drawn from; windows cut from a stream are not texts of their own
    if config.dedupe is not False and config.text_unit == "line" and len(held_out) < 2:
        texts, n_dup = dedupe(texts)
        if n_dup:
            notes.append(
                f"{n_dup} of {len(texts) + n_dup} examples removed as duplicates of earlier ones (the same text after "
                "whitespace is normalised) before splitting"
            )
    add_eos = config.text_unit == "line"
    n_all, n_long = len(texts), 0
    if config.too_long == "skip" and config.tokenizer != "bpe":
        # drop long examples before the split, so the vocabulary comes from exactly the training rows (for
        # bpe the lengths need a vocabulary: see below)
        probe = ByteTokenizer() if config.tokenizer == "byte" else None
        room = config.max_length - int(add_eos)
        short = [t for t in texts if (len(probe.encode(t)) if probe else len(t)) <= room]
        n_long, texts = len(texts) - len(short), short
        if not texts:
            raise DataError(f"{where}: every example is longer than max_length {config.max_length}")
    train_index = train_rows(len(texts)).tolist()
    tokenizer = build_tokenizer(config, [texts[i] for i in train_index])
    x, kept, n_more = encode_rows(texts, tokenizer, config.max_length, config.too_long, add_eos)
    n_long += n_more
    if config.tokenizer == "bpe" and len(kept) < len(texts):
        # the split is drawn over the rows kept: learn the vocabulary again from exactly their training rows
        # (the first one also saw rows that land in validation or test); an example that fitted the first
        # vocabulary but not this one is truncated
        texts = [texts[i] for i in kept]
        tokenizer = build_tokenizer(config, [texts[i] for i in train_rows(len(texts)).tolist()])
        x, kept, n_cut = encode_rows(texts, tokenizer, config.max_length, "truncate", add_eos)
        if n_cut:
            notes.append(f"{n_cut} examples over {config.max_length} tokens under the final vocabulary truncated")
    if counts["empty"]:
        notes.append(f"{counts['empty']} empty examples skipped")
    if counts["not_utf8"]:
        fix = "decoded with U+FFFD replacements" if config.text_errors == "replace" else "skipped"
        notes.append(f"{counts['not_utf8']} examples that are not UTF-8 {fix}")
    if n_long:
        done = "truncated" if config.too_long == "truncate" else "skipped"
        notes.append(f"{n_long} of {n_all} examples longer than {config.max_length} tokens {done}")
    if len(kept) == 0:
        raise DataError(f"{where}: every example is longer than max_length {config.max_length}; raise data.max_length")
    held_x = {}
    train_keys = {normalise_whitespace(t) for t in texts} if held_out else set()
    for name, ts in held_out.items():
        held_x[name], kept_h, n_long_h = encode_rows(ts, tokenizer, config.max_length, config.too_long, add_eos)
        if n_long_h:
            done = "truncated" if config.too_long == "truncate" else "skipped"
            notes.append(f"{n_long_h} of {len(ts)} {name} examples longer than {config.max_length} tokens {done}")
        if len(kept_h) == 0:
            raise DataError(f"{paths[name]}: no {name} examples left; check the file or raise data.max_length")
        n_seen = sum(normalise_whitespace(ts[i]) in train_keys for i in kept_h)
        if n_seen:
            notes.append(f"{n_seen} of {len(kept_h)} {name} examples also occur in the training file (kept as given)")
    for n in notes:
        print(f"hvae data: {where}: {n}", file=sys.stderr)
    return TextData(
        x=x,
        levels=None,
        tokenizer=tokenizer,
        notes=notes,
        val_x=held_x.get("val"),
        test_x=held_x.get("test"),
        duplicates=n_dup,
    )


@SOURCES.register("text")
class Text(Source):
    modality = "text"
    path_hint: str | None = "text file or folder of .txt files"
    split_suffixes: tuple[str, ...] = (".txt", ".tokens")

    def read(self, config, train_rows) -> TextData:
        return read_text(config, train_rows)

    def read_splits(self, config, paths: dict[str, Path], train_rows) -> TextData:
        return read_text(config, train_rows, paths)


@SOURCES.register("fortunes")
class Fortunes(Text):
    path_hint = None
    default_path = FORTUNES_PATH
    split_suffixes = ()


def token_counts(x: torch.Tensor, tokenizer: Tokenizer) -> dict[str, int]:
    """Units in a batch of rows (N, T): ``token`` (ids that count in the likelihood: all but padding, the
    end-of-sequence tokens included) and the tokeniser's own unit of the decoded texts (byte / char)."""
    out = {"token": int((x != tokenizer.pad_id).sum())}
    if tokenizer.kind == "byte":  # the ids themselves: a row cut inside a character still has its bytes
        out["byte"] = int((x < 256).sum())
    elif tokenizer.unit != "token":
        out[tokenizer.unit] = sum(tokenizer.count_units(t) for t in tokenizer.decode_batch(x))
    return out


def row_lengths(x: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(N, T) ids -> (N,) int64: each row's length up to and including its last id that is not padding."""
    if x.shape[1] == 0:
        return torch.zeros(x.shape[0], dtype=torch.long)
    not_pad = x != pad_id
    last = x.shape[1] - 1 - not_pad.flip(1).int().argmax(1)  # index of the last non-padding id
    return torch.where(not_pad.any(1), last + 1, 0)


def trim_batch(x: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T'): the trailing positions that are padding in every row dropped (T' >= 1)."""
    return x[:, : max(1, int(row_lengths(x, pad_id).max()))] if len(x) else x


def bucket_order(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of the rows whose consecutive batches hold examples of similar length: shuffle, sort
    within pools of 50 batches by length, cut into batches, shuffle the full batches. The rows left over by
    the last pool (fewer than a batch: what ``drop_last`` drops) are drawn at random before sorting, not
    its longest rows, so that no length is dropped more often than another."""
    n = len(lengths)
    perm = torch.randperm(n, generator=generator)
    pool = 50 * batch_size
    batches = []
    for lo in range(0, n, pool):
        idx = perm[lo : lo + pool]
        left, body = idx[: len(idx) % batch_size], idx[len(idx) % batch_size :]
        batches.extend(body[torch.argsort(lengths[body], stable=True)].split(batch_size))
        if len(left):
            batches.append(left)
    full = [b for b in batches if len(b) == batch_size]
    rest = [b for b in batches if len(b) != batch_size]
    order = torch.randperm(len(full), generator=generator).tolist()
    out = [full[i] for i in order] + rest
    return torch.cat(out) if out else perm
