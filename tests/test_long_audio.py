"""Windowed encoding of long recordings: frame-exact stitching, one window = one shot,
streamed files, bounded buffers."""

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import audio_file, load_model
from torch import nn

from higgs_tokenizer import HiggsAudioV2TokenizerModel
from higgs_tokenizer.audio import load_audio
from higgs_tokenizer import tokenizer as tokenizer_module
from higgs_tokenizer.long_audio import SampleSource, encode_long, encode_memory_bytes, file_source, window_plan
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


@pytest.fixture(scope="module")
def speech():
    return np.concatenate([load_audio(audio_file(n), 24000)[0] for n in ("en_man.wav", "belinda.wav", "mabel.wav")])


@pytest.fixture(scope="module")
def conv_only_model():
    """tiny-24k without HuBERT's two global operations, its attention layers and the group
    norm of its first conv (statistics over the whole input): every part is then local, so
    windows with enough context must reproduce one-shot encoding exactly. Those two are the
    only inexact parts of windowed encoding."""
    from helpers import fixture_dir

    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"))
    model.semantic_model.encoder.layers = nn.ModuleList()
    model.semantic_model.feature_extractor.conv_layers[0].layer_norm = None
    return model


def test_window_plan_tiles_the_frames():
    assert window_plan(100, 50, 30) == [(0, 100, 0, 100)]  # fits in one window: one shot
    plan = window_plan(1000, 300, 40)
    assert [(a, b) for a, b, _, _ in plan] == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert [(s, e) for _, _, s, e in plan] == [(0, 340), (260, 640), (560, 940), (860, 1000)]


@torch.inference_mode()
@pytest.mark.parametrize("rule,trim", [("transformers", 0), ("original", 0), ("original", 123), ("transformers", 123)])
def test_stitching_is_frame_exact(conv_only_model, speech, rule, trim):
    """Odd lengths included: the recording is encoded as a clip alone (at its valid length),
    the length rule's padding is decided once, and both branches are cut on the one-shot
    frame grid."""
    samples = speech[: 24000 * 20 - trim]
    clip = np.pad(samples, (0, conv_only_model.valid_length(len(samples), rule) - len(samples)))
    one_shot = conv_only_model.encode(torch.from_numpy(clip)[None, None], length_rule=rule).audio_codes[0]
    windowed = encode_long(
        conv_only_model, SampleSource.from_array(samples), length_rule=rule, window_seconds=3, context_seconds=3
    )
    assert windowed.shape == one_shot.shape
    assert (windowed == one_shot).float().mean() >= 0.999


@torch.inference_mode()
def test_one_window_is_one_shot_and_more_is_close(speech):
    model = load_model("tiny-24k")
    samples = speech[: 24000 * 12]
    one_shot = model.encode(torch.from_numpy(samples)[None, None]).audio_codes[0]
    fits = encode_long(model, SampleSource.from_array(samples), window_seconds=8, context_seconds=2)
    assert torch.equal(fits, one_shot)
    windowed = encode_long(model, SampleSource.from_array(samples), window_seconds=4, context_seconds=2)
    # HuBERT attends over the whole input and its first group norm averages over it; a window
    # sees only itself. With the tiny random model that moves ~7 % of codes
    # (docs/batching-long-streaming.md has full-size figures).
    assert windowed.shape == one_shot.shape and (windowed == one_shot).float().mean() > 0.85


@torch.inference_mode()
def test_a_bad_streamed_file_fails_alone_with_its_own_error(speech, tmp_path):
    """Streamed recordings can be read once: a failure beside them must not make them be
    read again (they would fail with an error that is not theirs)."""
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, speech[: 24000 * 5], 24000, subtype="FLOAT")
    broken = speech[: 24000 * 5].copy()
    broken[100_000] = np.nan
    sf.write(bad, broken, 24000, subtype="FLOAT")
    model = load_model("tiny-24k")
    tokenizer = HiggsAudioTokenizer(model, memory_budget_gb=1e-6, window_seconds=2, context_seconds=0.5, batch_size=4)
    clips = [tokenizer.load(good), tokenizer.load(bad), speech[:24000]]
    assert isinstance(clips[0], SampleSource) and isinstance(clips[1], SampleSource)
    codes, error, short = tokenizer.try_encode_clips(clips)
    assert torch.equal(codes, tokenizer.encode(good))
    assert isinstance(error, ValueError) and "NaN" in str(error)
    assert torch.equal(short, tokenizer.encode(speech[:24000], sample_rate=24000))


@torch.inference_mode()
def test_long_file_is_streamed_with_a_bounded_buffer(speech, tmp_path):
    pcm = (np.concatenate([speech] * 2)[: 44100 * 50] * 32767).astype(np.int16)  # 50 s, stored at 44.1 kHz
    path = tmp_path / "long.wav"
    sf.write(path, pcm, 44100)
    # A budget of half what 50 s needs by the estimate: the file is streamed in windows.
    budget = encode_memory_bytes(load_model("tiny-24k"), 24000 * 50) / 2 / 2**30
    tokenizer = HiggsAudioTokenizer(load_model("tiny-24k"), window_seconds=8, context_seconds=2, memory_budget_gb=budget)
    source = tokenizer.load(path)
    assert isinstance(source, SampleSource) and source.num_samples == round(len(pcm) * 24000 / 44100)
    largest = 0
    read = source.read

    def watched(start, stop):
        nonlocal largest
        out = read(start, stop)
        largest = max(largest, len(source._buffer))
        return out

    source.read = watched
    streamed = tokenizer.encode_clips([source])[0]
    assert largest <= 24000 * (8 + 2 * 2 + 10) + 960  # a window, its context and one read block
    in_memory = tokenizer.encode(load_audio(path, 24000)[0], sample_rate=24000)
    assert torch.equal(streamed, in_memory)  # soxr streamed = soxr whole
    assert torch.equal(tokenizer.encode(path), in_memory)
    result = tokenizer.encode_file(path, tmp_path / "long.hac")
    assert result.num_samples == source.num_samples
    audio = tokenizer.decode(tmp_path / "long.hac")  # longer than a window: decoded in chunks
    assert audio.shape == (source.num_samples,)


def test_file_source_length_matches_whole_file_resampling(tmp_path):
    for rate, n in ((44100, 448451), (48000, 527281), (22050, 12345), (24000, 24001)):
        data = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
        sf.write(tmp_path / "x.wav", data, rate, subtype="FLOAT")
        source = file_source(tmp_path / "x.wav", 24000, block_seconds=1.0)
        whole = load_audio(tmp_path / "x.wav", 24000)[0]
        assert source.num_samples == len(whole)
        assert np.array_equal(source.read(0, len(whole)), whole)


@torch.inference_mode()
def test_one_shot_while_the_estimate_fits_the_budget(speech, monkeypatch):
    """The policy: one call while `encode_memory_bytes` fits the budget, windows beyond it."""
    model = load_model("tiny-24k")
    clip = speech[: 24000 * 20]
    estimate = encode_memory_bytes(model, model.valid_length(len(clip)))
    assert estimate < encode_memory_bytes(model, 2 * len(clip)) / 2  # attention makes it grow faster than the length
    windowed_calls = []
    real = tokenizer_module.encode_long
    monkeypatch.setattr(tokenizer_module, "encode_long", lambda *a, **k: windowed_calls.append(1) or real(*a, **k))
    roomy = HiggsAudioTokenizer(model, memory_budget_gb=1.01 * estimate / 2**30, window_seconds=8, context_seconds=2)
    tight = HiggsAudioTokenizer(model, memory_budget_gb=0.99 * estimate / 2**30, window_seconds=8, context_seconds=2)
    one_shot = roomy.encode(clip, sample_rate=24000)
    assert windowed_calls == []
    assert torch.equal(one_shot, model.encode(torch.from_numpy(np.pad(clip, (0, -len(clip) % 960)))[None, None]).audio_codes[0])
    windowed = tight.encode(clip, sample_rate=24000)
    assert windowed_calls == [1] and windowed.shape == one_shot.shape
    with pytest.raises(ValueError, match="memory_budget_gb must be positive|must be positive"):
        HiggsAudioTokenizer(model, memory_budget_gb=0)
