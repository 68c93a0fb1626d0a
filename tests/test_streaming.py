"""Chunked and streamed decoding equal one-shot decoding, whatever the chunk or push sizes:
the incremental decoder keeps each layer's state, and gets the bits of one-shot decoding."""

import copy
import io

import numpy as np
import pytest
import torch
from helpers import SHARED, assert_audio_close, fixture_dir, load_cases, load_model

from higgs_tokenizer import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel
from higgs_tokenizer.decoder_streams import StreamingDecoder, decode_in_chunks
from higgs_tokenizer.streaming import decoder_context
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


# A stream's frame-rate layers run as matrix products (few columns a step), one-shot
# decoding's as oneDNN convs, and oneDNN's AVX2 kernels block by the input's width: the
# sums round differently, up to 2.2e-5 of peak on the tiny models (their float32 floor:
# one-shot decoding itself is 2e-5 from float64 there), natively and under AVX2.
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


@pytest.fixture(scope="module")
def full_size_decoder_model():
    """The full-size model with seeded random weights in the parts that decode (the
    semantic encoder stays on the meta device: decoding never touches it)."""
    config = HiggsAudioV2TokenizerConfig.from_json_file(SHARED / "reference" / "transformers_full_config.json")
    with torch.device("meta"):
        model = HiggsAudioV2TokenizerModel(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for part in (model.fc, model.fc2, model.quantizer, model.acoustic_decoder):
            part.to_empty(device="cpu")
            for module in part.modules():
                for name, p in module.named_parameters(recurse=False):
                    if name == "alpha":  # Snake: varied, as a trained model's are
                        p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.5)
                    elif name == "bias":
                        p.copy_(torch.rand(p.shape, generator=g) * 0.1 - 0.05)
                    else:  # fan-in scaled, so the signal neither dies nor explodes
                        fan_in = p[0].numel() if not isinstance(module, torch.nn.ConvTranspose1d) else p.shape[0] * p.shape[2] // module.stride[0]
                        p.copy_(torch.randn(p.shape, generator=g) / max(1, fan_in) ** 0.5)
            for name, b in part.named_buffers():
                b.copy_(torch.randn(b.shape, generator=g))
    return model


@pytest.mark.parametrize("time_major", [True, False])
def test_streams_in_either_memory_layout(model, codes, monkeypatch, time_major):
    """A step keeps time-major activations on the CPU and the usual layout on GPUs: both
    give one-shot decoding's audio (the GPU's layout checked here, on the CPU)."""
    import higgs_tokenizer.streaming as streaming

    monkeypatch.setattr(streaming, "_time_major", lambda device: time_major)
    with torch.inference_mode():
        reference = model.decode(codes).audio_values[:, 0]
        for b in range(codes.shape[0]):
            decoder, pieces = StreamingDecoder(model), []
            for start, size in ((0, 1), (1, 3), (4, 1), (5, 32)):
                pieces.append(decoder.push(codes[b, :, start : start + size]))
            pieces.append(decoder.flush())
            assert_audio_close(torch.cat(pieces), reference[b], tol=STREAM_TOL)
        batch = StreamingDecoder(model)  # two streams in one step: the batched products
        audio = torch.cat([batch.push(codes[:, :, :20]), batch.push(codes[:, :, 20:]), batch.flush()], dim=-1)
        assert_audio_close(audio, reference, tol=STREAM_TOL)


def test_a_checkpoint_loaded_in_place_reaches_the_stream(codes):
    """The kernels' packed weights are cached on the modules; a model made under inference
    mode (whose weights keep no version counter) and loaded in place with `load_state_dict`
    streams with the new weights."""
    with torch.inference_mode():
        model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"))
        StreamingDecoder(model).push(codes[0, :, :20])  # fills the caches
        changed = {k: v * 1.05 if "acoustic_decoder" in k and v.dim() == 3 else v for k, v in model.state_dict().items()}
        model.load_state_dict(changed)
        decoder = StreamingDecoder(model)
        audio = torch.cat([decoder.push(codes[0, :, f : f + 1]) for f in range(codes.shape[-1])] + [decoder.flush()])
        assert_audio_close(audio, model.decode(codes[:1]).audio_values[0, 0], tol=STREAM_TOL)
    # The caches stay behind when the model is copied or saved whole.
    copied = copy.deepcopy(model)
    torch.save(model, io.BytesIO())
    with torch.inference_mode():
        assert torch.equal(StreamingDecoder(copied).push(codes[0]), StreamingDecoder(model).push(codes[0]))


def test_weights_changed_in_place_or_replaced_reach_the_stream(codes):
    """A step's layers are made once per state of the decoder's weights; the next step sees a
    weight changed in place, one that a derived weight is made from, one replaced, a
    submodule replaced, and then a change inside the new submodule."""
    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"))
    decoder = model.acoustic_decoder

    def streamed_equals_one_shot():
        with torch.inference_mode():
            stream = StreamingDecoder(model)
            audio = torch.cat([stream.push(codes[0, :, f : f + 1]) for f in range(codes.shape[-1])] + [stream.flush()])
            assert_audio_close(audio, model.decode(codes[:1]).audio_values[0, 0], tol=STREAM_TOL)

    streamed_equals_one_shot()  # makes the layers
    with torch.no_grad():
        decoder.block[0].conv_t1.weight.mul_(1.05)  # its phase weight is derived
        decoder.block[-1].res_unit2.snake1.alpha.mul_(1.1)  # and Snake's 1 / alpha
        decoder.block[0].res_unit1.conv1.weight.mul_(0.95)  # packed for the products
        decoder.conv2.weight = torch.nn.Parameter(decoder.conv2.weight * 0.9)
        replaced = copy.deepcopy(decoder.block[0].res_unit2.conv1)
        replaced.weight.mul_(0.5)
        decoder.block[0].res_unit2.conv1 = replaced
    streamed_equals_one_shot()
    with torch.no_grad():
        replaced.weight.mul_(1.5)
        decoder.block[1] = copy.deepcopy(decoder.block[1])  # an item of a ModuleList
    streamed_equals_one_shot()
    with torch.no_grad():
        decoder.block[1].res_unit3.conv1.weight.mul_(0.7)
    streamed_equals_one_shot()


def test_a_module_class_without_a_hash_still_builds():
    """The weights watch hears of every module registration in the process (a global hook):
    a module that cannot be hashed (a dataclass with `eq`) must still build."""
    import dataclasses

    import higgs_tokenizer.weights_key  # noqa: F401 (the hook)

    @dataclasses.dataclass(eq=True)
    class Holder(torch.nn.Module):
        def __post_init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 2)

    assert isinstance(Holder().inner, torch.nn.Linear)


def test_an_eager_step_beside_a_compile_in_another_thread(model, codes, monkeypatch):
    """`torch.compiler.is_compiling()` is true for the whole process while any compile runs
    (torch 2.13): an eager step must not read it, or it would take the compiled path's
    products with the eager step's packed weights, and fail."""
    with torch.inference_mode():
        reference = model.decode(codes[:1]).audio_values[0, 0]
        stream = StreamingDecoder(model)
        pieces = [stream.push(codes[0, :, f : f + 1]) for f in range(15)]  # packs the weights
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as while another thread compiles
        pieces += [stream.push(codes[0, :, f : f + 1]) for f in range(15, codes.shape[-1])] + [stream.flush()]
    assert_audio_close(torch.cat(pieces), reference, tol=STREAM_TOL)


@torch.inference_mode()
def test_full_size_stream_is_within_the_float32_floor(full_size_decoder_model):
    """At full size a stream pushed frame by frame, or in random sizes, stays within 4e-4 of
    peak of one-shot decoding (the float32 floor of this decoder is about 1.7e-4 from float64)."""
    model = full_size_decoder_model
    codes = torch.randint(0, 1024, (8, 30), generator=torch.Generator().manual_seed(1))
    reference = model.decode(codes[None]).audio_values[0, 0]
    rng = np.random.default_rng(1)
    for sizes in ([1] * 30, list(rng.integers(1, 8, size=30))):
        decoder, pieces, start = StreamingDecoder(model), [], 0
        for size in sizes:
            if start >= codes.shape[-1]:
                break
            pieces.append(decoder.push(codes[:, start : start + size]))
            start += size
        pieces.append(decoder.flush())
        assert_audio_close(torch.cat(pieces), reference, tol=4e-4)
