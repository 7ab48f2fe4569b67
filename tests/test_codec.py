"""Lossless compression with bits-back ANS (hvae.codec): exact round trips for every latent kind and every
discrete likelihood, the rate against -ELBO, the file format's refusals, determinism across processes."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import hvae
from hvae import codec
from hvae.cli import main
from hvae.codec import container

LOG2 = math.log(2)


def _model(preset="small", train_pass=True, **kw):
    torch.manual_seed(0)
    model = hvae.build_model(getattr(hvae.presets, preset)(**kw))
    if train_pass:  # VQ codebooks are initialised from the first training pass; batch norms move
        model.train()
        model(_data(model, 32, seed=1))
    return model.eval()


def _data(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *model.data_shape)
    lik = model.config.likelihood
    if lik == "bernoulli":
        return torch.bernoulli(torch.full(shape, 0.3), generator=g)
    levels = model.config.num_classes if lik == "categorical" else 2**model.config.num_bits
    return torch.randint(0, levels, shape, generator=g).float() / (levels - 1)


LATENTS = {
    "gaussian-ladder": dict(inference="ladder"),
    "gaussian-top_down-skip": dict(inference="top_down", generative_skip=True, residual_posterior=True),
    "gaussian-bottom_up": dict(inference="bottom_up"),
    "categorical": dict(latent_types=["categorical", "gaussian", "categorical"], categorical_classes=5),
    "bernoulli": dict(latent_types=["bernoulli", "bernoulli", "gaussian"]),
    "vq": dict(latent_types=["vq", "gaussian", "vq"], vq={"codes": 16, "dim": 3}, latent_dims=[4, 2, 2]),
    "discrete-bottom_up": dict(latent_types=["categorical", "vq", "bernoulli"], inference="bottom_up", vq={"codes": 8}),
}


@pytest.mark.parametrize("name", list(LATENTS))
def test_round_trip_is_exact_for_every_latent_kind(name):
    model = _model(**LATENTS[name])
    x = _data(model, 10)
    data = codec.compress(model, x, latent_bits=8)
    y = codec.decompress(model, data)
    assert y.dtype == torch.float32 and torch.equal(y, x)


@pytest.mark.parametrize(
    "preset, kw",
    [
        ("small", dict(likelihood="categorical", num_classes=4)),
        ("conv_small", dict()),
        ("conv_small", dict(likelihood="discretized_logistic_mixture", num_mixtures=3, data_shape=[1, 8, 8])),
        ("conv_small", dict(likelihood="discretized_logistic_mixture", num_mixtures=2, data_shape=[3, 8, 8])),
    ],
    ids=["categorical", "bernoulli-conv", "logistic-grey", "logistic-rgb"],
)
def test_round_trip_is_exact_for_every_discrete_likelihood(preset, kw):
    model = _model(preset, **kw)
    x = _data(model, 4)
    assert torch.equal(codec.decompress(model, codec.compress(model, x, latent_bits=6)), x)


AUTOREGRESSIVE = [
    dict(decoder="pixelcnn", data_shape=[1, 4, 5], likelihood="bernoulli"),
    dict(decoder="pixelcnn", data_shape=[3, 3, 3], likelihood="categorical"),  # the head orders the channels
    dict(decoder="pixelcnn", data_shape=[3, 3, 4], likelihood="discretized_logistic_mixture"),
    dict(decoder="transformer", data_shape=[1, 2, 3], likelihood="bernoulli"),
    dict(decoder="gru", data_shape=[1, 7], likelihood="categorical"),
]


@pytest.mark.parametrize("kw", AUTOREGRESSIVE, ids=lambda kw: f"{kw['decoder']}-{kw['likelihood']}")
def test_round_trip_is_exact_for_autoregressive_decoders(kw):
    cfg = dict(
        latent_dims=[3, 2], hidden_dims=[8, 8], depth=1, ar_cond_channels=3, pixelcnn={"layers": 2, "channels": 8}
    )
    cfg.update(seq_layers=2, seq_width=8, seq_heads=2, num_classes=3, num_mixtures=2, num_bits=3)
    torch.manual_seed(0)
    model = hvae.build_model(hvae.ModelConfig.from_dict({**cfg, **kw})).eval()
    x = _data(model, 8)
    # batches of several examples too: the decoder must run the very batches the encoder ran
    data = codec.compress(model, x, latent_bits=6)
    assert max(codec.info(data)["batches"]) > 1
    assert torch.equal(codec.decompress(model, data), x)


def test_integer_levels_code_as_their_values():
    model = _model(likelihood="categorical", num_classes=4)
    k = torch.randint(0, 4, (6, 64), generator=torch.Generator().manual_seed(3))
    assert torch.equal(codec.decompress(model, codec.compress(model, k)), k.float() / 3)


def _trained_small():
    """A small Ladder VAE fitted for a few seconds to noisy copies of four binary prototypes."""
    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small(latent_dims=[8, 4], hidden_dims=[64, 32]))
    protos = torch.bernoulli(torch.full((4, 64), 0.5))
    opt = hvae.make_optimizer(model, lr=3e-3)

    def batch(n):
        x = protos[torch.randint(0, 4, (n,))]
        flip = torch.bernoulli(torch.full_like(x, 0.05))
        return (x + flip) % 2

    model.train()
    for _ in range(100):
        out = model(batch(32), beta=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval(), batch(400)


def test_net_rate_of_a_trained_model_is_its_negative_elbo():
    model, x = _trained_small()
    data = codec.compress(model, x, latent_bits=10)
    h = codec.info(data)
    torch.manual_seed(0)
    with torch.no_grad():
        neg_elbo_bits = float(torch.stack([-model(x).elbo for _ in range(20)]).mean()) * x.shape[0] / LOG2
    # bits back: the net rate is -ELBO in expectation (one posterior sample per example), plus the buckets'
    # small discretisation loss
    assert h["net_bits"] == pytest.approx(neg_elbo_bits, rel=0.02)
    assert h["total_bits"] == 8 * len(data) > h["net_bits"] + h["init_bits"]
    assert torch.equal(codec.decompress(model, data), x)


def test_same_input_gives_the_same_bytes():
    model = _model()
    x = _data(model, 8)
    assert codec.compress(model, x) == codec.compress(model, x)


def test_compress_leaves_the_thread_count_and_mode_alone():
    model = _model()
    model.train()
    threads = torch.get_num_threads()
    codec.compress(model, _data(model, 2))
    assert torch.get_num_threads() == threads and model.training
    assert not torch.are_deterministic_algorithms_enabled()


def test_refusals_name_the_problem():
    model = _model()
    x = _data(model, 6)
    data = codec.compress(model, x)
    with pytest.raises(codec.FormatError, match="truncated or corrupted"):
        codec.decompress(model, data[:-50])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x10
    with pytest.raises(codec.FormatError, match="truncated or corrupted"):
        codec.decompress(model, bytes(corrupt))
    with pytest.raises(codec.FormatError, match="another model"):
        codec.decompress(_model(latent_dims=[16, 8, 5]), data)
    header, payload = container.unpack(data)
    newer = bytearray(container.pack(header, payload))
    newer[len(container.MAGIC)] = container.VERSION + 1  # the version field, little-endian
    with pytest.raises(codec.FormatError, match="newer hvae"):
        codec.decompress(model, bytes(newer))
    with pytest.raises(codec.FormatError, match="not an hvae compressed file"):
        codec.decompress(model, b"PK\x03\x04" + data)
    with pytest.raises(ValueError, match="continuous values"):
        codec.compress(_model(likelihood="gaussian"), x)
    with pytest.raises(ValueError, match="binary data"):
        codec.compress(model, x * 0.5)


def test_payload_from_another_model_with_the_same_hash_field_never_gives_wrong_data():
    # a file whose header names this model but whose words were coded by another fails its data checksum
    model, other = _model(), _model(latent_dims=[16, 8, 5])
    x = _data(model, 6)
    header, _ = container.unpack(codec.compress(model, x))
    _, foreign = container.unpack(codec.compress(other, x))
    with pytest.raises(codec.CorruptError):
        codec.decompress(model, container.pack(header, foreign))


def test_a_fresh_process_decodes_the_file(tmp_path):
    model = _model(**LATENTS["gaussian-top_down-skip"])
    x = _data(model, 12)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "f.hvz").write_bytes(codec.compress(hvae.load(tmp_path / "m"), x))
    script = (
        "import sys, numpy, torch, hvae\n"
        "torch.set_num_threads(2)\n"
        "from hvae import codec\n"
        "m = hvae.load(sys.argv[1])\n"
        "numpy.save(sys.argv[3], codec.decompress(m, open(sys.argv[2], 'rb').read()).numpy())\n"
    )
    args = [str(tmp_path / "m"), str(tmp_path / "f.hvz"), str(tmp_path / "y.npy")]
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), x.numpy())


def test_cli_compress_and_decompress_a_split(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["model.preset=small", "model.latent_dims=[4,2]", "model.hidden_dims=[16,8]", "data.max_examples=120"]
    tiny += ["train.epochs=1", "train.batch_size=32"]
    assert main(["train", "--config", "configs/default.yaml", *tiny, "--out", str(run), "--quiet"]) == 0
    f = tmp_path / "test.hvz"
    assert main(["compress", str(run), "--split", "test", "--out", str(f)]) == 0
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "-ELBO" in printed and "examples/s" in printed
    assert main(["compress", str(run), "--split", "test", "--out", str(f)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    out = tmp_path / "test.npy"
    assert main(["decompress", str(f), "--out", str(out)]) == 0
    from hvae.data import load_dataset
    from hvae.runconfig import RunConfig

    x = load_dataset(RunConfig.from_yaml(run / "config.yaml").data).eval_tensor("test")
    assert np.array_equal(np.load(out), x.numpy().astype(np.uint8))
    assert main(["decompress", str(f), "--out", str(out)]) == 2


def _token_model(decoder, T=20):
    cfg = hvae.presets.text_fortunes(
        data_shape=[T], latent_dims=[4, 2], hidden_dims=[16, 8], embed_dim=8, decoder=decoder, seq_width=16
    )
    cfg = hvae.ModelConfig.from_dict({**cfg.to_dict(), "seq_heads": 2, "ar_cond_channels": 4})
    torch.manual_seed(0)
    return hvae.build_model(cfg).eval()


def _token_rows(T=20):
    from hvae.data.text import ByteTokenizer, encode_rows

    texts = ["hello there", "a", "", "padding is not data", "x" * 40]
    texts = [t for t in texts if t] + ["é!"]
    x = encode_rows(texts, ByteTokenizer(), T, "truncate", add_eos=True)[0]
    return torch.cat([x, torch.full((1, T), ord("y"))])  # and a row with no end-of-sequence: all T coded


@pytest.mark.parametrize("decoder", ["gru", "transformer", "plain"])
def test_token_rows_round_trip_up_to_their_end_of_sequence(decoder):
    model = _token_model(decoder)
    x = _token_rows()
    data = codec.compress(model, x, latent_bits=6)
    y = codec.decompress(model, data)
    assert y.dtype == torch.int64 and torch.equal(y, x)
    # a row's length is coded by its end-of-sequence: a row cut shorter costs fewer bits
    short = x.clone()
    short[0, 3] = 256
    short[0, 4:] = 257
    assert len(codec.compress(model, short, latent_bits=6)) < len(data)
    # rows given shorter than T are padded out
    cut = codec.decompress(model, codec.compress(model, x[:, :15], latent_bits=6))
    assert torch.equal(cut, torch.cat([x[:, :15], torch.full((x.shape[0], 5), 257)], 1))


def test_token_rows_with_ids_after_their_end_are_refused():
    model = _token_model("gru")
    x = _token_rows()
    x[1, -1] = ord("z")  # row 1 is "a", EOS, padding...
    with pytest.raises(ValueError, match="token row 1 has ids other than padding"):
        codec.compress(model, x)


def test_cli_compresses_a_text_file_and_a_fresh_process_writes_the_texts_back(tmp_path, capsys):
    texts = [f"fox {i} jumps, café" for i in range(40)]
    src = tmp_path / "a.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "--config", "configs/text_fortunes.yaml", "data.source=text", f"data.path={src}"]
    args += ["data.max_length=24", "model.latent_dims=[4,2]", "model.hidden_dims=[16,8]", "model.seq_width=16"]
    args += ["model.seq_heads=2", "train.epochs=1", "train.batch_size=16", "train.max_steps=2", "--out", str(run)]
    assert main([*args, "--quiet"]) == 0
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("a new line\nanother one, naïve\n", encoding="utf-8")
    f = tmp_path / "t.hvz"
    capsys.readouterr()
    assert main(["compress", str(run), str(held_out), "--out", str(f)]) == 0
    printed = capsys.readouterr().out
    assert "bits per byte" in printed and "nats per text" in printed and "-ELBO" in printed
    out = tmp_path / "back.txt"
    cmd = [sys.executable, "-m", "hvae", "decompress", str(f), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.read_text(encoding="utf-8") == held_out.read_text(encoding="utf-8")
    assert main(["decompress", str(f), "--out", str(tmp_path / "back.npy")]) == 2  # texts go to a .txt
    assert ".txt" in capsys.readouterr().err
