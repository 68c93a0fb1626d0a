"""The seed's usage example runs with only the import line changed (model_id: a local checkpoint)."""

import torch
from conftest import fixture_dir, load_cases


def test_seed_example_runs_unchanged():
    model_id = str(fixture_dir("tiny-24k"))
    device = "cpu"
    audio_sample = load_cases("tiny-24k")["input_72000"].numpy()

    from higgs_tokenizer import HiggsAudioV2TokenizerFeatureExtractor, HiggsAudioV2TokenizerModel

    feature_extractor = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(model_id)
    model = HiggsAudioV2TokenizerModel.from_pretrained(model_id, device_map=device)
    inputs = feature_extractor(raw_audio=audio_sample, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    encoder_outputs = model.encode(inputs["input_values"])
    decoder_outputs = model.decode(encoder_outputs.audio_codes)
    audio_values = decoder_outputs.audio_values
    audio_values_forward = model(**inputs).audio_values

    assert encoder_outputs.audio_codes.shape == (1, 8, 75) and encoder_outputs.audio_codes.dtype == torch.int64
    assert audio_values.shape == (1, 1, 72000) and audio_values_forward.shape == (1, 1, 72000)
    assert torch.allclose(audio_values, audio_values_forward)


def test_output_access_styles():
    from conftest import load_model

    model = load_model("tiny-16k")
    x = load_cases("tiny-16k")["input_3200"][None, None]
    with torch.inference_mode():
        out = model.encode(x)
        assert out[0] is out.audio_codes is out["audio_codes"]
        assert torch.equal(model.encode(x, return_dict=False), out.audio_codes)
        codes, audio = model(x, return_dict=False)
        assert torch.equal(codes, out.audio_codes) and audio.shape == (1, 1, 3200)
        assert model(x, audio_codes=codes).audio_values.shape == (1, 1, 3200)
