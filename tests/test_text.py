"""Text: tokenisers, padding masks, the text / fortunes sources, the sentence-level preset end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

import hvae
from hvae.cli import main
from hvae.config import ConfigError, ModelConfig
from hvae.data import DataConfig, DataError, load_dataset
from hvae.data.text import (
    FORTUNES_PATH,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    _windows,
    load_tokenizer,
    read_examples,
    token_counts,
)
from hvae.likelihoods import Categorical
from hvae.nets.autoregressive import CausalTransformer, GRUDecoder
from tests.browser import HAVE_CHROMIUM, dump_dom

CORPUS = [
    "Hello, world!",
    "naïve café — déjà vu",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines",
    "日本語のテキスト",
    "emoji 😀 and ∑ maths",
    "",
]


def _write(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture
def small_text(tmp_path):
    lines = [f"the quick brown fox {i} jumps over the lazy dog".encode() for i in range(60)]
    return _write(tmp_path / "a.txt", lines)


# ---------------------------------------------------------------------------------------------------- tokenisers


def test_byte_tokenizer_round_trip_is_exact():
    tok = ByteTokenizer()
    for s in CORPUS:
        ids = tok.encode(s)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == s
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (258, 256, 257)


def test_char_tokenizer_maps_unseen_characters_to_unknown(tmp_path):
    tok = CharTokenizer.fit(["abc", "cab d"])
    assert tok.decode(tok.encode("bad cab")) == "bad cab"
    ids = tok.encode("az")
    assert ids[1] == tok.unk_id and tok.decode(ids) == "a\ufffd"
    assert load_tokenizer(tok.save(tmp_path / "tok.json")).encode("cab") == tok.encode("cab")


def test_bpe_round_trip_on_the_corpus_and_after_saving(tmp_path):
    corpus = [s for s in CORPUS if s] * 5 + [f"line {i} of some repeated text" for i in range(50)]
    tok = BPETokenizer.fit(corpus, vocab_size=300)
    loaded = load_tokenizer(tok.save(tmp_path / "tokenizer.json"))
    for s in corpus + ["unseen: ü ∑ 😀 \r\n x"]:
        ids = tok.encode(s)
        assert max(ids) < tok.eos_id  # specials sit at the end of the ids
        assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == s
        assert loaded.decode(loaded.encode(s)) == s
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == "bpe"


@pytest.mark.skipif(not os.path.isdir(FORTUNES_PATH), reason="Debian's fortunes package is not installed")
def test_bpe_round_trip_on_fortunes():
    texts = load_dataset(DataConfig(source="fortunes", tokenizer="byte", max_length=256, too_long="skip"))
    tok = texts.tokenizer
    sample = tok.decode_batch(texts.train.x[:300])
    bpe = BPETokenizer.fit(sample, vocab_size=500)
    assert all(bpe.decode(bpe.encode(s)) == s for s in sample)


# ---------------------------------------------------------------------------------------------------- padding


def test_categorical_ignores_padding():
    torch.manual_seed(0)
    K, T, pad = 12, 6, 11
    lik, lik_long = Categorical((T,), K, pad_id=pad), Categorical((T + 5,), K, pad_id=pad)
    logits = torch.randn(2, K, 1, T + 5)
    x = torch.randint(0, 10, (2, T))
    x[1, 4:] = pad
    x_long = torch.cat([x, torch.full((2, 5), pad)], 1)
    lp = lik(logits[..., :T].reshape(2, K, T)).log_prob(x)
    lp_long = lik_long(logits.reshape(2, K, T + 5)).log_prob(x_long)
    torch.testing.assert_close(lp, lp_long)
    by_hand = torch.log_softmax(logits[1, :, 0, :4], 0).gather(0, x[1, :4].unsqueeze(0)).sum()
    torch.testing.assert_close(lp[1], by_hand)


@pytest.mark.parametrize("decoder", ["transformer", "gru"])
def test_appending_padding_changes_no_autoregressive_log_prob(decoder):
    """The same decoder on sequences of length T and T + 5 (the extra positions padding) gives equal log p."""
    from hvae.likelihoods import Autoregressive

    torch.manual_seed(0)
    K, T, pad, P = 10, 8, 9, 4

    def build(length):
        torch.manual_seed(1)
        if decoder == "gru":
            net = GRUDecoder(K, P, K, width=16, layers=1)
        else:
            net = CausalTransformer(K, P, K, length, width=16, layers=2, heads=2)
        return Autoregressive((length,), Categorical((length,), K, pad_id=pad, tokens=True), net, P, K)

    short, long = build(T), build(T + 5)
    if decoder == "transformer":
        state = long.state_dict()
        state["net.pos"] = state["net.pos"][:T]
        short.load_state_dict(state)
    cond = torch.randn(3, P, T + 5)
    x = torch.randint(0, 8, (3, T))
    x[2, 5:] = pad
    x_long = torch.cat([x, torch.full((3, 5), pad)], 1)
    torch.testing.assert_close(short(cond[..., :T]).log_prob(x), long(cond).log_prob(x_long))


# ---------------------------------------------------------------------------------------------------- the model


def _token_model(T=24, decoder="gru"):
    cfg = hvae.presets.text_fortunes(
        data_shape=[T],
        latent_dims=[8, 4, 2],
        hidden_dims=[32, 16, 8],
        embed_dim=8,
        decoder=decoder,
        seq_width=16,
        seq_heads=2,
        ar_cond_channels=4,
    )
    torch.manual_seed(0)
    return hvae.build_model(cfg)


def _token_batch(tok, texts, T):
    from hvae.data.text import encode_rows

    return encode_rows(texts, tok, T, "truncate", add_eos=True)[0]


def test_model_takes_token_ids_and_returns_ids():
    model = _token_model()
    x = _token_batch(ByteTokenizer(), ["hello there", "a", "padding is ignored"], 24)
    out = model(x)
    assert out.elbo.shape == (3,) and torch.isfinite(out.loss)
    model.eval()
    s = model.sample(2)
    assert s.dtype == torch.int64 and s.shape == (2, 24)
    assert model.sample_conditional(x, keep_top=1).dtype == torch.int64
    with pytest.raises(TypeError, match="integer token ids need likelihood categorical"):
        hvae.build_model(hvae.presets.small())(torch.zeros(2, 64, dtype=torch.long))


def test_iw_bound_is_at_least_the_elbo_on_sequences():
    model = _token_model(decoder="transformer").eval()
    x = _token_batch(ByteTokenizer(), ["one sentence", "and another one", "third"], 24)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model(x).elbo for _ in range(64)]).mean(0)
    iw = model.log_likelihood(x, num_samples=64)
    assert (iw >= elbo - 0.05).all(), (iw, elbo)


@pytest.mark.parametrize("decoder", ["plain", "transformer", "gru"])
def test_trimmed_batch_gives_the_same_numbers(decoder):
    """A batch trimmed of the padding all its rows share scores exactly as the full-length rows; a row
    longer than the model's length is refused with the limit in the message."""
    model = _token_model(decoder=decoder).eval()
    x = _token_batch(ByteTokenizer(), ["one sentence", "and another one", "third"], 24)
    short = model.trim_padding(x)
    assert short.shape == (3, len("and another one") + 1) and (short == x[:, : short.shape[1]]).all()
    for fn in (lambda t: model(t).elbo, lambda t: model(t).log_px, lambda t: model.log_likelihood(t, 16)):
        torch.manual_seed(0)
        full = fn(x)
        torch.manual_seed(0)
        assert torch.allclose(fn(short), full, atol=1e-4), decoder
    assert model.trim_padding(torch.full((2, 24), 257)).shape == (2, 1)
    with pytest.raises(ValueError, match=r"T <= 24"):
        model(torch.zeros(2, 25, dtype=torch.long))


def test_training_batches_are_bucketed_by_length_and_trimmed(tmp_path):
    """Shuffled text batches group similar lengths and drop the padding every row shares; each epoch still
    visits every example once (the last partial batch dropped) and the order depends on the epoch only."""
    g = torch.Generator().manual_seed(0)
    lines = [("w" * int(n)).encode() for n in torch.randint(1, 60, (400,), generator=g)]
    path = _write(tmp_path / "l.txt", lines)
    cfg = DataConfig(source="text", path=path, max_length=64, val_fraction=0.0, test_fraction=0.1, dedupe=False)
    ds = load_dataset(cfg)
    pad = ds.tokenizer.pad_id
    lengths = (ds.train.x != pad).sum(1)
    batches = list(ds.batches("train", 16, epoch=3))
    assert len(batches) == len(ds.train) // 16
    widths = [b.shape[1] for b in batches]
    assert all(((b != pad).any(0)).all() for b in batches)  # no column of padding only
    assert all(b.shape[1] == int((b != pad).sum(1).max()) for b in batches)
    spread = sum(int((b != pad).sum(1).max() - (b != pad).sum(1).min()) for b in batches) / len(batches)
    assert spread < 10 and sum(widths) < 0.6 * len(batches) * 64  # random batches: spread ~ 50, width ~ 60
    seen = torch.cat([(b != pad).sum(1) for b in batches])
    assert len(seen) == len(batches) * 16 and set(seen.tolist()) <= set(lengths.tolist())
    again = list(ds.batches("train", 16, epoch=3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not all(torch.equal(a, b) for a, b in zip(batches, ds.batches("train", 16, epoch=4)))
    plain = load_dataset(DataConfig(**{**cfg.to_dict(), "length_buckets": False}))
    spread_plain = [int((b != pad).sum(1).max() - (b != pad).sum(1).min()) for b in plain.batches("train", 16)]
    assert sum(spread_plain) / len(spread_plain) > 30


def test_bucketed_epochs_drop_random_rows_not_the_longest():
    from hvae.data.text import bucket_order

    lengths = torch.arange(1000)  # one pool of 50 batches of 16 and 200 rows more: 8 left over each epoch
    dropped = []
    for epoch in range(200):
        order = bucket_order(lengths, 16, torch.Generator().manual_seed(epoch))
        assert sorted(order.tolist()) == list(range(1000))  # a permutation: every row once
        dropped.append(lengths[order[-8:]])
    # the longest fifth of the rows would be dropped every time if the leftover were cut after sorting
    assert torch.cat(dropped).float().mean() == pytest.approx(500, abs=40)


def test_config_checks_token_settings():
    with pytest.raises(ConfigError, match="pad_id"):
        ModelConfig(data_shape=[8], likelihood="categorical", num_classes=10, pad_id=10)
    with pytest.raises(ConfigError, match="embed_dim"):
        ModelConfig(data_shape=[8], likelihood="bernoulli", embed_dim=4)


# ---------------------------------------------------------------------------------------------------- the sources


def test_text_source_lines_padding_and_counts(tmp_path, capsys):
    path = _write(tmp_path / "t.txt", [b"short", b"", b"   ", b"x" * 50, b"fine line"] * 4)
    ds = load_dataset(
        DataConfig(source="text", path=path, max_length=16, val_fraction=0.2, test_fraction=0.2, dedupe=False)
    )
    err = capsys.readouterr().err
    assert "8 empty examples skipped" in err and "4 of 12 examples longer than 16 tokens truncated" in err
    assert ds.shape == (16,) and ds.train.x.dtype == torch.int64
    tok = ds.tokenizer
    rows = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    assert sorted(tok.decode_batch(rows)) == sorted(["short", "x" * 15, "fine line"] * 4)
    assert ((rows == tok.eos_id).sum(1) == 1).all()
    skipped = load_dataset(DataConfig(source="text", path=path, max_length=16, too_long="skip", dedupe=False))
    assert len(skipped.train) + len(skipped.val) + len(skipped.test) == 8


def test_non_utf8_text_error_replace_or_skip(tmp_path, capsys):
    path = _write(tmp_path / "bad.txt", [b"good line", b"caf\xe9 latin-1", b"another good one"] * 5)
    with pytest.raises(DataError, match="line 2 is not UTF-8.*text_errors"):
        load_dataset(DataConfig(source="text", path=path, dedupe=False))
    ds = load_dataset(DataConfig(source="text", path=path, text_errors="replace", dedupe=False))
    assert "5 examples that are not UTF-8 decoded with U+FFFD replacements" in capsys.readouterr().err
    texts = ds.tokenizer.decode_batch(torch.cat([ds.train.x, ds.val.x, ds.test.x]))
    assert texts.count("caf\ufffd latin-1") == 5
    ds = load_dataset(DataConfig(source="text", path=path, text_errors="skip", dedupe=False))
    assert "5 examples that are not UTF-8 skipped" in capsys.readouterr().err
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10


def test_char_vocabulary_comes_from_the_training_split(tmp_path):
    lines = [b"aaaa"] * 30 + [b"zzzz"]
    path = _write(tmp_path / "c.txt", lines)
    ds = load_dataset(
        DataConfig(source="text", path=path, tokenizer="char", val_fraction=0.2, test_fraction=0.2, dedupe=False)
    )
    held_out = torch.cat([ds.val.x, ds.test.x])
    in_train = any("z" in t for t in ds.tokenizer.decode_batch(ds.train.x))
    assert ("z" in ds.tokenizer.chars) == in_train
    if not in_train:
        assert (held_out == ds.tokenizer.unk_id).any()


def test_windows_over_the_stream(tmp_path):
    path = _write(tmp_path / "w.txt", [b"abcdefghij" * 5])
    ds = load_dataset(DataConfig(source="text", path=path, text_unit="window", max_length=8, val_fraction=0.0,
                                 test_fraction=0.0))  # fmt: skip
    texts = ds.tokenizer.decode_batch(ds.train.x)
    assert sorted(len(t) for t in texts) == [3] + [8] * 6  # 51 characters (with the newline) in windows of 8
    assert "".join(t for t in texts if len(t) == 8)  # no end-of-sequence inside windows
    assert not (ds.train.x == ds.tokenizer.eos_id).any()


def test_token_counts_say_bytes_and_tokens():
    tok = ByteTokenizer()
    x = _token_batch(tok, ["héllo", "ab"], 12)
    assert token_counts(x, tok) == {"token": 6 + 1 + 2 + 1, "byte": 6 + 2}


@pytest.mark.skipif(not os.path.isdir(FORTUNES_PATH), reason="Debian's fortunes package is not installed")
def test_fortunes_source():
    ds = load_dataset(DataConfig(source="fortunes", max_length=128, too_long="skip", text_errors="replace"))
    assert ds.shape == (128,) and len(ds.train) > 5000
    assert all(t.strip() and "\n%\n" not in t for t in ds.tokenizer.decode_batch(ds.test.x[:200]))


# ---------------------------------------------------------------------------------------------------- end to end


def test_text_preset_trains_evaluates_samples_and_reports(tmp_path, small_text, capsys):
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/text_fortunes.yaml", "data.source=text", f"data.path={small_text}",
        "data.tokenizer=bpe", "data.bpe_vocab_size=300", "data.max_length=24", "train.epochs=1",
        "train.batch_size=16", "train.max_steps=3", "--out", str(run), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert (run / "tokenizer.json").is_file()
    cfg = ModelConfig.from_json((run / "model" / "config.json").read_text())
    tok = load_tokenizer(run / "tokenizer.json")
    assert (cfg.num_classes, cfg.pad_id, cfg.data_shape) == (tok.vocab_size, tok.pad_id, [24])
    capsys.readouterr()
    assert main(["eval", str(run), "--num-samples", "4", "--max-examples", "6"]) == 0
    printed = capsys.readouterr().out
    assert "bits per token" in printed and "bits/dim" not in printed  # padding would count per dimension
    result = json.loads((run / "eval.json").read_text())
    assert "bits_per_dim_iw" not in result
    assert result["tokenizer"] == "bpe" and result["bits_per_token_iw"] > 0
    assert result["nats_per_sequence_iw"] == pytest.approx(-result["iw_bound"])
    assert "latents tell the decoder" in printed and "reconstruction similarity" in printed
    assert 0 <= result["reconstruction_similarity"] <= 1 and result["latent_info_examples"] == 6
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "3"]) == 0
    assert len((run / "samples" / "samples.txt").read_text().splitlines()) == 3
    flags = ["--n", "3", "--overwrite", "--temperature", "0"]
    greedy = [main(["sample", str(run), *flags, "--decode", "greedy", "--seed", s]) for s in ("1", "2")]
    assert greedy == [0, 0]  # the second run overwrote the first: the same text (greedy at the prior means)
    out = run / "samples" / "samples.txt"
    text = out.read_text()
    assert main(["sample", str(run), *flags, "--decode", "greedy", "--seed", "3"]) == 0 and out.read_text() == text
    flags = ["--decode", "top_k", "--top-k", "3", "--decoder-temperature", "0.7"]
    assert main(["sample", str(run), "--n", "2", "--overwrite", *flags]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--overwrite", "--top-k", "3"]) != 0
    assert "--top-k applies to --decode top_k; add --decode top_k" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "2", "--interpolate", "--steps", "4", "--decode", "top_p"]) == 0
    assert main(["sample", str(run), "--n", "2", "--from-data", "--keep-top", "1"]) == 0
    assert "the quick brown fox" in (run / "samples" / "keep_top.txt").read_text()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Token ids decoded by the run&#x27;s bpe tokenizer" in page and "the quick brown fox" in page
    if HAVE_CHROMIUM:  # the page renders: the decoded texts are in the browser's DOM
        dom = dump_dom(run / "report.html", tmp_path / "profile")
        assert "the quick brown fox" in dom and "Token ids decoded" in dom


def test_text_with_a_model_for_images_is_refused_with_the_config_to_start_from(tmp_path, small_text, capsys):
    args = ["train", "model.preset=small", "data.source=text", f"data.path={small_text}"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "need a categorical sequence model, not likelihood bernoulli" in err and "text_fortunes.yaml" in err
    assert not (tmp_path / "run").exists()


def test_byte_windows_hold_at_most_max_length_bytes_and_never_split_a_character():
    text = "Voilà un café très cher, naïve idée. " * 3
    windows = _windows(text, 8, by_bytes=True)
    assert "".join(windows) == text and all(len(w.encode()) <= 8 for w in windows)
    assert _windows("abcdef", 4, by_bytes=False) == ["abcd", "ef"]


def test_bpe_reads_special_names_written_in_a_text_as_text():
    tok = BPETokenizer.fit(["the quick brown fox jumps over the lazy dog"] * 20, 300)
    ids = tok.encode("use <pad> and <eos> tags")
    assert min(ids) >= 0 and tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == "use <pad> and <eos> tags"
    assert load_tokenizer_round_trip(tok).encode("use <pad> and <eos> tags") == ids


def load_tokenizer_round_trip(tok):
    from hvae.data.text import tokenizer_from_dict

    return tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))


def test_bytes_are_counted_from_the_ids_even_in_a_row_cut_inside_a_character():
    tok = ByteTokenizer()
    ids = tok.encode("café")[:4] + [tok.eos_id, tok.pad_id]  # "caf" and the first byte of "é"
    assert token_counts(torch.tensor([ids]), tok) == {"token": 5, "byte": 4}


def test_fortunes_keep_their_percent_signs(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "set").write_bytes(b"%DCL-MEM-BAD, bad memory\n%\n100% sure\n%\nthe last one\n%")
    texts, _ = read_examples(DataConfig(source="fortunes", path=str(tmp_path / "f")))
    assert texts == ["%DCL-MEM-BAD, bad memory", "100% sure", "the last one"]


def test_bpe_with_long_examples_skipped_learns_only_from_the_final_training_rows(tmp_path, monkeypatch):
    import hvae.data.text as text

    lines = [f"line {i} of the corpus, {'long ' * (i % 4) * 6}end".encode() for i in range(80)]
    path = _write(tmp_path / "t.txt", lines)
    fitted = []
    real = text.build_tokenizer
    monkeypatch.setattr(text, "build_tokenizer", lambda cfg, texts: fitted.append(list(texts)) or real(cfg, texts))
    cfg = DataConfig(source="text", path=path, tokenizer="bpe", bpe_vocab_size=300, max_length=24, too_long="skip")
    ds = load_dataset(cfg)
    assert 0 < len(ds.train) + len(ds.val) + len(ds.test) < 80  # some were skipped
    train = sorted(ds.tokenizer.decode_batch(ds.train.x))
    assert sorted(fitted[-1]) == train  # the vocabulary saw the training rows, and nothing else


# ---------------------------------------------------------------------------------------------------- dedupe, splits


def test_duplicates_are_removed_before_the_split_and_counted(tmp_path, capsys):
    lines = [b"one  two", b"three", b" one two ", b"one\ttwo", b"four", b"three", b"five"]
    path = _write(tmp_path / "d.txt", lines)
    ds = load_dataset(DataConfig(source="text", path=path, val_fraction=0.2, test_fraction=0.2))
    texts = ds.tokenizer.decode_batch(torch.cat([ds.train.x, ds.val.x, ds.test.x]))
    assert sorted(texts) == ["five", "four", "one  two", "three"]  # the first of each kept
    assert "3 of 7 examples removed as duplicates" in capsys.readouterr().err
    assert "3 of 7 examples removed as duplicates" in ds.notes[0]
    kept = load_dataset(DataConfig(source="text", path=path, dedupe=False))
    assert len(kept.train) + len(kept.val) + len(kept.test) == 7
    with pytest.raises(ConfigError, match="dedupe: only text sources"):
        DataConfig(source="digits", dedupe=True)


@pytest.mark.skipif(not os.path.isdir(FORTUNES_PATH), reason="Debian's fortunes package is not installed")
def test_fortunes_duplicates_never_straddle_the_split():
    texts, _ = read_examples(DataConfig(source="fortunes"))
    exact = len(texts) - len(set(texts))
    normalised = len(texts) - len({" ".join(t.split()) for t in texts})
    assert exact == 83 and normalised >= exact  # the 83 identical texts, and more that differ in spacing
    ds = load_dataset(DataConfig(source="fortunes", max_length=256, too_long="skip", text_errors="replace"))
    assert any(f"{normalised} of {len(texts)} examples removed as duplicates" in n for n in ds.notes)
    splits = {
        s: {" ".join(t.split()) for t in ds.tokenizer.decode_batch(ds.split(s).x)} for s in ("train", "val", "test")
    }
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["val"]


def test_ptb_style_split_files_share_the_training_vocabulary(tmp_path, capsys):
    folder = tmp_path / "ptb"
    folder.mkdir()
    _write(folder / "ptb.train.txt", [b"the cat sat", b"a dog ran", b"the cat sat", b"birds fly"])
    _write(folder / "ptb.valid.txt", [b"the dog sat", b"zebra"])
    _write(folder / "ptb.test.txt", [b"a cat ran", b"the cat sat", b"the cat sat"])
    ds = load_dataset(DataConfig(source="text", path=str(folder), tokenizer="char", max_length=16))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 2, 3)  # given splits: nothing removed or carved
    assert "z" not in ds.tokenizer.chars and (ds.val.x == ds.tokenizer.unk_id).any()  # vocabulary: train only
    assert ds.tokenizer.decode_batch(ds.test.x) == ["a cat ran", "the cat sat", "the cat sat"]
    assert "2 of 3 test examples also occur in the training file" in capsys.readouterr().err
    assert ds.splits_from == {
        s: str(folder / f"ptb.{n}.txt") for s, n in (("train", "train"), ("val", "valid"), ("test", "test"))
    }
    (folder / "ptb.valid.txt").unlink()  # val carved from the deduplicated training file
    ds = load_dataset(DataConfig(source="text", path=str(folder), max_length=16, val_fraction=0.34))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2, 1, 3)
    assert ds.splits_from["val"] == f"34% of {folder / 'ptb.train.txt'}"


# --- remedies for latents that the decoder ignores -----------------------------------------------------------


def _remedy_model(**changes):
    base = _token_model(T=12)
    other = hvae.build_model(base.config.replace(**changes))
    other.load_state_dict(base.state_dict(), strict=False)  # BN-VAE's norms are new: they start as built
    return other.eval()


_SENTENCES = ["hello there", "a", "padding is ignored", "the quick brown fox"]


def test_free_bits_per_sequence_floor_each_examples_kl_summed_over_levels():
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    probe = _remedy_model()
    torch.manual_seed(0)
    total = sum(probe(x).kl)  # (B,) nats: every level's KL per example
    lam = total.median().item()
    model = _remedy_model(free_bits=lam, free_bits_mode="sequence")
    torch.manual_seed(0)
    out = model(x, beta=0.5)
    assert torch.allclose(sum(out.kl), total)
    assert (total < lam).any() and (total > lam).any()
    assert torch.allclose(out.loss, -out.log_px.mean() + 0.5 * total.clamp_min(lam).mean())
    # not the per-level floor: with this lambda each level's KL sits below it
    layer = _remedy_model(free_bits=lam, free_bits_mode="layer")
    torch.manual_seed(0)
    assert not torch.allclose(layer(x, beta=0.5).loss, out.loss)
    with pytest.raises(ConfigError, match="free_bits_mode: sequence floors the sum"):
        probe.config.replace(free_bits=1.0, free_bits_mode="sequence", kl_balancing=True)


def test_cyclical_kl_annealing_ramps_beta_in_each_cycle_then_holds_it():
    model = _remedy_model(beta=2.0, kl_cycles=2, kl_cycle_steps=100, kl_cycle_ramp=0.5)
    betas = [model.beta_at(s) for s in (0, 25, 50, 99, 100, 125, 160, 200, 10_000)]
    assert betas == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0, 2.0]
    with pytest.raises(ConfigError, match="kl_cycle_steps: the length of a KL cycle"):
        model.config.replace(kl_cycles=2, kl_cycle_steps=0)
    with pytest.raises(ConfigError, match="two KL schedules"):
        model.config.replace(kl_warmup_steps=10)
    with pytest.raises(ConfigError, match="kl_cycle_ramp"):
        model.config.replace(kl_cycle_ramp=0.0)


def test_batch_normalised_posterior_means_have_the_fixed_scale_over_a_batch():
    gamma = 0.6
    model = _remedy_model(bn_posterior_means=gamma).train()
    plain = _remedy_model().train()
    x = _token_batch(ByteTokenizer(), _SENTENCES * 4, 12)
    torch.manual_seed(0)
    run = model._infer(x)
    for q in run.qs:  # per channel over the batch (and positions): mean = the shift (0 at first), std = gamma
        mu = q.mu.transpose(0, 1).flatten(1)
        assert torch.allclose(mu.mean(1), torch.zeros(mu.shape[0]), atol=1e-5)
        assert torch.allclose(mu.var(1, unbiased=False).sqrt(), torch.full((mu.shape[0],), gamma), atol=1e-3)
    torch.manual_seed(0)
    assert not torch.allclose(plain._infer(x).qs[0].mu, run.qs[0].mu)
    # the shift is learned, the scale is not; eval reads the running statistics
    out = model(x)
    out.loss.backward()
    norms = [layer.mean_norm for layer in model.layers]
    assert all(n.shift.grad is not None and n.shift.grad.abs().sum() > 0 for n in norms)
    assert all(not (n.running_var == 1).all() for n in norms)
    with pytest.raises(ConfigError, match="bn_posterior_means"):
        model.config.replace(bn_posterior_means=-1.0)


def _blind_decoder():
    """A text model whose decoder cannot read its latents (its conditioning is a constant), a byte tokeniser and
    a batch of ``_SENTENCES``."""
    model = _remedy_model(data_shape=[12])
    with torch.no_grad():  # the decoder's conditioning is a constant: z cannot reach p(x | z)
        model.decoder_head.weight.zero_()
    tok = ByteTokenizer()
    return model, tok, _token_batch(tok, _SENTENCES, 12)


def test_latents_that_the_decoder_cannot_read_tell_it_nothing_and_its_own_greedy_text_is_rebuilt_exactly():
    from hvae.evaluate import latent_information

    model, tok, x = _blind_decoder()
    info = latent_information(model, x, tok.eos_id, batch_size=3)
    assert info["latent_nats"] == pytest.approx(0.0, abs=1e-9) and info["latent_info_examples"] == 4
    assert info["reconstruction_similarity"] < 1
    greedy = model.sample(4, decode="greedy")  # what any z decodes to, padded after end-of-sequence
    assert latent_information(model, greedy, tok.eos_id)["reconstruction_similarity"] == 1.0
    # the ids compared stop at end-of-sequence or padding
    from hvae.evaluate import _until_eos

    assert _until_eos([5, 6, tok.eos_id, tok.pad_id], tok.eos_id) == [5, 6] and _until_eos([1, 2], 9) == [1, 2]
