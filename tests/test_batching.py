"""Exact batched encoding: a padded batch with its mask gives every item what it gets alone,
which under the default length rule is its clip right-padded to a whole hop (the feature
extractor's single-clip input; `model.valid_length`)."""

import copy

import numpy as np
import pytest
import torch
from helpers import assert_audio_close, assert_codes_match, audio_file, case_lengths, load_cases, load_extra, load_model

from higgs_tokenizer.audio import load_audio
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


def padded_batch(clips):
    lengths = [len(c) for c in clips]
    x = torch.zeros(len(clips), 1, max(lengths))
    for i, clip in enumerate(clips):
        x[i, 0, : len(clip)] = torch.as_tensor(clip)
    mask = (torch.arange(x.shape[-1]) < torch.tensor(lengths)[:, None]).long()
    return x, mask


def relative(a, b):
    return float((a - b).norm() / b.norm())


def alone(clip: torch.Tensor, hop: int) -> torch.Tensor:
    """`[1, 1, samples]`: the clip as the feature extractor pads it on its own."""
    return torch.nn.functional.pad(clip, (0, -len(clip) % hop))[None, None]


@torch.inference_mode()
def test_fixture_batch_gives_each_clip_its_own_codes(fixture_name):
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    lengths = case_lengths(fixture_name)
    x, mask = padded_batch([cases[f"input_{n}"] for n in lengths])
    out = model.encode(x, padding_mask=mask)
    embeddings, frames = model.latents(x, mask)
    assert torch.equal(out.code_lengths, frames)
    for i, n in enumerate(lengths):
        reference = cases[f"fe_codes_{n}"]
        assert int(out.code_lengths[i]) == reference.shape[1]
        assert_codes_match(out.audio_codes[i, :, : reference.shape[1]], reference, cases[f"fe_margin_{n}"])
        assert (out.audio_codes[i, :, reference.shape[1] :] == 0).all()
        single, _ = model.latents(cases[f"fe_input_values_{n}"][None, None])
        # float32 rounding that depends on the batch shape (an equal-length batch of one clip
        # repeated shows it too): up to 2.6e-5 here, 2e-5 at full size with random weights
        # (docs/batching-long-streaming.md).
        assert relative(embeddings[i, : reference.shape[1]], single[0]) < 1e-4


@torch.inference_mode()
def test_feature_extractor_batch_with_its_mask(fixture_name):
    """The reference's own padded batch: with the mask every item's codes are its codes alone
    (without it they are `batch_reference_codes`, which differ)."""
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    out = model.encode(cases["batch_fe_input_values"], padding_mask=cases["batch_fe_padding_mask"])
    differs_from_reference = False
    for i, n in enumerate(case_lengths(fixture_name)):
        reference = cases[f"fe_codes_{n}"]
        assert int(out.code_lengths[i]) == reference.shape[1]
        assert_codes_match(out.audio_codes[i, :, : reference.shape[1]], reference, cases[f"fe_margin_{n}"])
        unmasked = cases["batch_reference_codes"][i, :, : reference.shape[1]]
        differs_from_reference |= not torch.equal(unmasked, reference)
    assert differs_from_reference  # the mask matters on this batch


@torch.inference_mode()
def test_real_speech_random_lengths_and_batch_sizes():
    model = load_model("tiny-24k")
    speech = np.concatenate([load_audio(audio_file(n), 24000)[0] for n in ("mabel.wav", "en_man.wav")])
    rng = np.random.default_rng(4)
    total = equal = 0
    worst = 0.0
    for batch_size in (1, 2, 5, 8):
        clips = []
        for _ in range(batch_size):
            n = int(rng.uniform(0.1, 15.0) * 24000)
            start = int(rng.integers(0, len(speech) - n))
            clips.append(speech[start : start + n])
        x, mask = padded_batch(clips)
        out = model.encode(x, padding_mask=mask)
        embeddings, frames = model.latents(x, mask)
        for i, clip in enumerate(clips):
            single = alone(torch.from_numpy(clip), model.config.hop_length)
            codes = model.encode(single).audio_codes[0]
            t = codes.shape[1]
            assert int(frames[i]) == t
            equal += int((out.audio_codes[i, :, :t] == codes).sum())
            total += codes.numel()
            worst = max(worst, relative(embeddings[i, :t], model.latents(single)[0][0]))
    assert worst < 1e-4
    assert equal / total >= 0.999, equal / total


@torch.inference_mode()
def test_forward_and_decode_with_lengths(fixture_name):
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    lengths = case_lengths(fixture_name)[:5]
    x, mask = padded_batch([cases[f"input_{n}"] for n in lengths])
    audio = model(x, padding_mask=mask).audio_values
    encoded = model.encode(x, padding_mask=mask)
    decoded = model.decode(encoded.audio_codes, code_lengths=encoded.code_lengths).audio_values
    hop = model.config.hop_length
    for i, n in enumerate(lengths):
        reference = load_extra()[f"{fixture_name}/fe_forward_{n}"]  # the padded clip's forward pass
        t = int(encoded.code_lengths[i])
        assert torch.equal(encoded.audio_codes[i, :, :t], cases[f"fe_codes_{n}"])  # no near ties here
        # Audio is cut to the batch's width, here shorter than the last clip's padded length.
        assert_audio_close(audio[i, 0, : len(reference)], reference[: audio.shape[-1]])
        assert (audio[i, 0, len(reference) :] == 0).all()
        single = model.decode(encoded.audio_codes[i : i + 1, :, :t]).audio_values[0, 0]
        assert_audio_close(decoded[i, 0, : t * hop], single)
        assert (decoded[i, 0, t * hop :] == 0).all()


def test_bad_padding_masks():
    model = load_model("tiny-24k")
    x = torch.zeros(2, 1, 2000)
    with pytest.raises(ValueError, match="padding_mask has shape"):
        model.encode(x, padding_mask=torch.ones(2, 100))
    holes = torch.ones(2, 2000, dtype=torch.long)
    holes[0, 10] = 0
    with pytest.raises(ValueError, match="right padding only"):
        model.encode(x, padding_mask=holes)
    short = torch.ones(2, 2000, dtype=torch.long)
    short[1, 100:] = 0  # padded to a hop under the default rule; too short under the original
    with pytest.raises(ValueError, match="item 1 of the batch has 100 samples: too short"):
        model.encode(x, padding_mask=short, length_rule="original")
    empty = torch.ones(2, 2000, dtype=torch.long)
    empty[0] = 0
    with pytest.raises(ValueError, match="item 0 of the batch has 0 samples: too short"):
        model.encode(x, padding_mask=empty)


@torch.inference_mode()
def test_tokenizer_batches_are_exact(short_recordings):
    """The high-level API sorts clips by length and batches them with masks."""
    tokenizer = HiggsAudioTokenizer(load_model("tiny-24k"), batch_size=3)
    one_by_one = HiggsAudioTokenizer(load_model("tiny-24k"), batch_size=1)
    speech = load_audio(short_recordings["mabel.wav"], 24000)[0]
    clips = [(speech[:n], 24000) for n in (3000, 36000, 12345, 500, 24000, 7000, 36000)]
    batched, alone = tokenizer.encode(clips), one_by_one.encode(clips)
    for got, expected in zip(batched, alone):
        assert got.shape == expected.shape
        assert (got == expected).float().mean() >= 0.99
    equal = sum(int((g == e).sum()) for g, e in zip(batched, alone)) / sum(e.numel() for e in alone)
    assert equal >= 0.999


@torch.inference_mode()
def test_batches_by_an_audio_seconds_budget(monkeypatch):
    """`batch_seconds`: clips (longest first) share a call while clips x the longest fits the
    budget; a clip longer than it goes alone. Each clip still gets its own codes."""
    rate = 24000
    speech, _ = load_audio(audio_file("mabel.wav"), rate)
    seconds = [4.0, 3.0, 1.0, 1.0, 0.5]
    clips = [speech[: int(s * rate)] for s in seconds]
    budgeted = HiggsAudioTokenizer(load_model("tiny-24k"), batch_seconds=6.0)
    assert budgeted.batch_size is None  # the budget alone decides
    calls = []
    real = budgeted.model.encode
    monkeypatch.setattr(budgeted.model, "encode", lambda x, **kw: calls.append(x.shape[0]) or real(x, **kw))
    codes = budgeted.encode_clips(clips)
    assert calls == [1, 2, 2]  # [4 s], [3 s, 1 s] (2 x 3 <= 6), [1 s, 0.5 s]
    one_by_one = HiggsAudioTokenizer(load_model("tiny-24k"), batch_size=1)
    for got, clip in zip(codes, clips):
        expected = one_by_one.encode_clips([clip])[0]
        assert got.shape == expected.shape and (got == expected).float().mean() >= 0.99  # exact up to near ties
    # Both limits at once: the count caps what the budget allows.
    both = HiggsAudioTokenizer(load_model("tiny-24k"), batch_size=2, batch_seconds=100.0)
    assert both.batch_full([rate, rate]) and not both.batch_full([rate])
    assert [len(b) for b in both._batches([(i, c) for i, c in enumerate(clips)])] == [2, 2, 1]
    with pytest.raises(ValueError, match="batch_seconds must be positive"):
        HiggsAudioTokenizer(load_model("tiny-24k"), batch_seconds=0)


def test_default_batching_by_device():
    """One clip a call on the CPU; on any other device the measured audio budget."""
    from higgs_tokenizer.tokenizer import GPU_BATCH_SECONDS

    cpu = HiggsAudioTokenizer(load_model("tiny-24k"))
    assert (cpu.batch_size, cpu.batch_seconds) == (1, None)
    elsewhere = HiggsAudioTokenizer(copy.deepcopy(load_model("tiny-24k")).to("meta"))
    assert elsewhere.model.device.type == "meta"
    assert (elsewhere.batch_size, elsewhere.batch_seconds) == (None, GPU_BATCH_SECONDS)
