"""Chunked and streamed decoding equal one-shot decoding, whatever the chunk or push sizes:
the incremental decoder keeps each layer's state, and gets the bits of one-shot decoding."""

import numpy as np
import pytest
import torch
from helpers import assert_audio_close, load_cases, load_model

from higgs_tokenizer.decoder_streams import StreamingDecoder, decode_in_chunks
from higgs_tokenizer.streaming import decoder_context
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


# A stream gets one-shot decoding's bits with oneDNN's AVX-512 kernels; with its AVX2
# kernels, whose blocking follows the input's width, up to 1.8e-5 of peak on the tiny
# models (the float32 floor: one-shot decoding itself is 2e-5 from float64 there).
STREAM_TOL = 5e-5


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-24k")


@pytest.fixture(scope="module")
def codes():
    return load_cases("tiny-24k")["random_codes"]  # [2, 8, 37]


@torch.inference_mode()
def test_context_is_the_decoders_receptive_field(model):
    """Derived from the layers: a change `right + 1` frames ahead leaves a frame's audio
    bit-identical, a change `right` frames ahead does not (and likewise on the left)."""
    left, right = decoder_context(model)
    assert (left, right) == (10, 10)
    hop, f = model.config.hop_length, 30
    base = torch.randint(0, 1024, (1, 8, 60), generator=torch.Generator().manual_seed(0))
    reference = model.decode(base).audio_values[0, 0, f * hop : (f + 1) * hop]

    def changed(at):
        other = base.clone()
        other[0, :, at] = (other[0, :, at] + 1) % 1024
        return not torch.equal(model.decode(other).audio_values[0, 0, f * hop : (f + 1) * hop], reference)

    assert changed(f + right) and not changed(f + right + 1)
    assert changed(f - left) and not changed(f - left - 1)


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10, 11, 21, 36, 37, 100])
def test_chunked_decode_equals_one_shot(model, codes, chunk):
    reference = model.decode(codes).audio_values[:, 0]
    assert_audio_close(decode_in_chunks(model, codes, chunk), reference)


@torch.inference_mode()
def test_streaming_push_sizes(model, codes):
    one = codes[0]
    reference = model.decode(one[None]).audio_values[0, 0]
    rng = np.random.default_rng(0)
    schedules = {
        "one frame at a time": [1] * one.shape[1],
        "random sizes": [],
        "all at once": [one.shape[1]],
    }
    remaining = one.shape[1]
    while remaining:
        size = int(min(remaining, rng.integers(1, 9)))
        schedules["random sizes"].append(size)
        remaining -= size
    for name, sizes in schedules.items():
        stream = StreamingDecoder(model)
        pieces, start = [], 0
        for size in sizes:
            piece = stream.push(one[:, start : start + size])
            start += size
            # A sample is final, and given out, once `latency_samples` of audio after it have codes.
            assert stream.samples_emitted == max(0, start * model.config.hop_length - stream.latency_samples), name
            assert piece.dim() == 1
            pieces.append(piece)
        pieces.append(stream.flush())
        assert_audio_close(torch.cat(pieces), reference, tol=STREAM_TOL)


@torch.inference_mode()
def test_streaming_batch_and_misuse(model, codes):
    stream = StreamingDecoder(model)
    # Derived from the layers: 9458 samples at 24 kHz, under the 10 frames of the receptive field.
    assert stream.latency_frames == 10 and stream.latency_samples == 9458 and round(stream.latency_ms, 1) == 394.1
    out = torch.cat([stream.push(codes[..., :20]), stream.push(codes[..., 20:]), stream.flush()], dim=-1)
    assert_audio_close(out, model.decode(codes).audio_values[:, 0])
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(codes[..., :1])
    other = StreamingDecoder(model)
    other.push(codes[0, :, :3])
    with pytest.raises(ValueError, match="mixing"):
        other.push(codes[..., :3])
    with pytest.raises(ValueError, match="this stream has"):
        other.push(codes[0, :4, :3])
    with pytest.raises(RuntimeError, match="nothing was pushed"):
        StreamingDecoder(model).flush()


@torch.inference_mode()
def test_tokenizer_chunked_and_streamed(model, codes):
    tokenizer = HiggsAudioTokenizer(model, window_seconds=0.4, context_seconds=0.2)
    one = codes[0]
    reference = model.decode(one[None]).audio_values[0, 0]
    assert_audio_close(tokenizer.decode(one, chunk_frames=5), reference)
    assert_audio_close(tokenizer.decode(one), reference)  # longer than the window: chunked by default
    stream = tokenizer.stream_decoder()
    assert_audio_close(torch.cat([stream.push(one), stream.flush()]), reference)


@torch.inference_mode()
def test_a_refused_push_leaves_the_stream_as_it_was(model, codes):
    """An LM's end token (1025), float codes or a wrong quantizer count are refused before
    anything is kept; the stream then goes on exactly as if they were never pushed."""
    stream = StreamingDecoder(model)
    pieces = [stream.push(codes[0, :, :5])]
    bad_pushes = {
        "must lie in \\[0, 1024\\)": torch.full((8, 1), 1025),
        "integer tensor": codes[0, :, 5:6].float(),
        "this stream has": codes[0, :4, 5:6],
    }
    for match, bad in bad_pushes.items():
        with pytest.raises((ValueError, TypeError), match=match):
            stream.push(bad)
    assert stream.frames_received == 5
    pieces += [stream.push(codes[0, :, 5:]), stream.flush()]
    with pytest.raises(ValueError, match="decodes 1 to 8"):
        StreamingDecoder(model).push(torch.zeros(9, 1, dtype=torch.long))
    assert_audio_close(torch.cat(pieces), model.decode(codes[:1]).audio_values[0, 0])
