"""The seed's usage example, run with only the import line changed (model_id: a local
checkpoint), against the reference's outputs for the same calls.

A clip alone is what the feature extractor makes of it: right-padded to a whole hop.
`model(**inputs)` (which passes the padding mask) must then be the reference's forward
pass and `decode(encode(input_values))`, for clip lengths whose remainder falls below,
inside and above the band where the length rule would pad an unpadded clip."""

import pytest
import torch
from helpers import assert_audio_close, assert_codes_match, case_lengths, fixture_dir, load_cases, load_extra, load_model

from higgs_tokenizer import HiggsAudioV2TokenizerFeatureExtractor, HiggsAudioV2TokenizerModel


def test_seed_example_runs_unchanged():
    model_id = str(fixture_dir("tiny-24k"))
    device = "cpu"
    audio_sample = load_cases("tiny-24k")["input_72000"].numpy()

    feature_extractor = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(model_id)
    model = HiggsAudioV2TokenizerModel.from_pretrained(model_id, device_map=device)
    inputs = feature_extractor(raw_audio=audio_sample, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    encoder_outputs = model.encode(inputs["input_values"])
    decoder_outputs = model.decode(encoder_outputs.audio_codes)
    audio_values = decoder_outputs.audio_values
    audio_values_forward = model(**inputs).audio_values

    assert encoder_outputs.audio_codes.shape == (1, 8, 75) and encoder_outputs.audio_codes.dtype == torch.int64
    assert audio_values.shape == (1, 1, 72000) and audio_values_forward.shape == (1, 1, 72000)
    assert torch.equal(audio_values, audio_values_forward)


def usage_clips(name: str) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """clip length → (clip, reference codes of its padded input, their margins, reference forward)."""
    cases, extra = load_cases(name), load_extra()
    clips = {
        n: (cases[f"input_{n}"], cases[f"fe_codes_{n}"], cases[f"fe_margin_{n}"], extra[f"{name}/fe_forward_{n}"])
        for n in case_lengths(name)
    }
    speech = cases[f"input_{max(case_lengths(name))}"]
    for n in extra[f"{name}/snippet_lengths"].tolist():
        clips[n] = (
            speech[:n],
            extra[f"{name}/snippet_fe_codes_{n}"],
            extra[f"{name}/snippet_fe_margin_{n}"],
            extra[f"{name}/snippet_forward_{n}"],
        )
    return clips


@torch.inference_mode()
def test_forward_pass_is_the_references_and_encode_plus_decode(fixture_name):
    model = load_model(fixture_name)
    fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(fixture_dir(fixture_name))
    hop = model.config.hop_length
    clips = usage_clips(fixture_name)
    padded_by_the_rule = 0
    for n, (clip, codes, margins, forward) in clips.items():
        inputs = fe(raw_audio=clip.numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt")
        assert inputs["input_values"].shape[-1] == -(-n // hop) * hop
        encoded = model.encode(inputs["input_values"]).audio_codes
        assert_codes_match(encoded[0], codes, margins)
        out = model(**inputs)
        assert_codes_match(out.audio_codes[0], codes, margins)
        assert_audio_close(out.audio_values[0, 0], forward)
        decoded = model.decode(encoded).audio_values[..., : inputs["input_values"].shape[-1]]
        assert torch.equal(out.audio_values, decoded)
        # The unpadded clip alone gets other codes where the rule pads its acoustic branch.
        padded_by_the_rule += model.code_frames(n) > 0 and model.acoustic_padding(n) > 0
    assert padded_by_the_rule >= 3  # the band is covered


@torch.inference_mode()
def test_feature_extractor_batch_gives_each_clip_its_single_clip_result(fixture_name):
    model = load_model(fixture_name)
    fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(fixture_dir(fixture_name))
    clips = usage_clips(fixture_name)
    lengths = list(clips)
    inputs = fe(raw_audio=[clips[n][0].numpy() for n in lengths], sampling_rate=fe.sampling_rate, return_tensors="pt")
    out = model(**inputs)
    encoded = model.encode(inputs["input_values"], padding_mask=inputs["padding_mask"])
    assert torch.equal(out.audio_codes, encoded.audio_codes)
    hop = model.config.hop_length
    for i, n in enumerate(lengths):
        _, codes, margins, forward = clips[n]
        frames = int(encoded.code_lengths[i])
        assert frames == codes.shape[1]
        assert_codes_match(encoded.audio_codes[i, :, :frames], codes, margins)
        assert (encoded.audio_codes[i, :, frames:] == 0).all()
        valid = -(-n // hop) * hop
        audio = out.audio_values[i, 0, :valid]
        # A near tie may resolve otherwise in a batch (float32 rounding depends on its
        # shape): the audio is then that of the codes the item got, decoded alone.
        item_codes = encoded.audio_codes[i : i + 1, :, :frames]
        assert_audio_close(audio, model.decode(item_codes).audio_values[0, 0, :valid])
        if torch.equal(item_codes[0], codes):
            assert_audio_close(audio, forward)
        assert (out.audio_values[i, 0, valid:] == 0).all()


@torch.inference_mode()
def test_original_rule_encodes_each_clip_unpadded(fixture_name):
    """Under the original rule a clip alone is the clip as it is (Boson AI's `encode` takes
    unpadded audio): a feature-extractor batch gives each item the original's codes of its
    unpadded clip, and its audio is zero past the clip."""
    model = load_model(fixture_name)
    fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(fixture_dir(fixture_name))
    extra = load_extra()
    prefix = f"{fixture_name}/original_input_"
    clips = {int(k[len(prefix):]): v for k, v in extra.items() if k.startswith(prefix)}
    lengths = sorted(clips)
    inputs = fe(raw_audio=[clips[n].numpy() for n in lengths], sampling_rate=fe.sampling_rate, return_tensors="pt")
    out = model(**inputs, length_rule="original")
    for i, n in enumerate(lengths):
        reference = extra[f"{fixture_name}/original_codes_{n}"]
        alone = model.encode(clips[n][None, None], length_rule="original").audio_codes[0]
        got = out.audio_codes[i, :, : reference.shape[1]]
        assert torch.equal(got, alone), n
        # No margins for these cases; the tiny fixtures' near ties are rare.
        assert (got == reference).float().mean() >= 0.99, n
        assert (out.audio_values[i, 0, n:] == 0).all()


def test_a_masked_item_needs_only_one_sample():
    """Padded to a whole hop, even one sample is a clip the model encodes."""
    model = load_model("tiny-24k")
    x = torch.zeros(2, 1, 960)
    x[0, 0, 0] = 0.5
    mask = torch.zeros(2, 960, dtype=torch.long)
    mask[0, :1] = 1
    mask[1, :] = 1
    with torch.inference_mode():
        out = model.encode(x, padding_mask=mask)
    assert out.code_lengths.tolist() == [1, 1]
    with pytest.raises(ValueError, match="item 0 of the batch has 1 samples: too short"):
        model.encode(x, padding_mask=mask, length_rule="original")


def test_output_access_styles():
    model = load_model("tiny-16k")
    x = load_cases("tiny-16k")["input_3200"][None, None]
    with torch.inference_mode():
        out = model.encode(x)
        assert out[0] is out.audio_codes is out["audio_codes"]
        assert torch.equal(model.encode(x, return_dict=False), out.audio_codes)
        codes, audio = model(x, return_dict=False)
        assert torch.equal(codes, out.audio_codes) and audio.shape == (1, 1, 3200)
        assert model(x, audio_codes=codes).audio_values.shape == (1, 1, 3200)
