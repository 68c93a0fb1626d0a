"""Compiled streaming steps (torch.compile, a real C++ build): the audio of one-shot
decoding, a stream moving between compiled and eager steps, shapes not compiled and
changed weights running eagerly."""

import copy
import threading

import pytest
import torch
from helpers import assert_audio_close, load_model
from test_streaming import STREAM_TOL

from higgs_tokenizer.decoder_streams import DecoderStreams, StreamingDecoder


@pytest.fixture(scope="module")
def model():
    # A copy of its own: one test changes its weights.
    return copy.deepcopy(load_model("tiny-24k"))


@pytest.fixture(scope="module")
def streams(model):
    streams = DecoderStreams(model)
    streams.compile(batch_sizes=(1, 2), frames=(1,))
    return streams


def random_codes(seed: int, frames: int, num_quantizers: int = 8) -> torch.Tensor:
    return torch.randint(0, 1024, (num_quantizers, frames), generator=torch.Generator().manual_seed(seed))


def stream_audio(streams: DecoderStreams, codes: dict[int, torch.Tensor], push_sizes) -> dict[int, torch.Tensor]:
    """Each stream's whole audio, its codes pushed `push_sizes` frames at a time (in turn,
    so that the streams step together)."""
    ids = {key: streams.add() for key in codes}
    sent = {key: 0 for key in codes}
    audio = {key: [] for key in codes}
    sizes = iter(push_sizes)
    while any(sent[k] < c.shape[1] for k, c in codes.items()):
        size = next(sizes)
        for key, c in codes.items():
            if sent[key] < c.shape[1]:
                streams.push(ids[key], c[:, sent[key] : sent[key] + size])
                sent[key] += size
                if sent[key] >= c.shape[1]:
                    streams.end(ids[key])
        out = streams.step()
        for key, stream_id in ids.items():
            audio[key].append(out.get(stream_id, torch.zeros(0)))
    out = streams.step()
    for key, stream_id in ids.items():
        audio[key].append(out.get(stream_id, torch.zeros(0)))
        streams.remove(stream_id)
    return {key: torch.cat(pieces) for key, pieces in audio.items()}


def one_shot(model, codes: torch.Tensor) -> torch.Tensor:
    return model.decode(codes[None]).audio_values[0, 0]


def test_compiled_steps_give_one_shot_audio(model, streams):
    """Two streams a frame at a time: their steady steps run compiled, batched, and each
    stream's audio is its one-shot decoding."""
    codes = {"a": random_codes(1, 40), "b": random_codes(2, 40)}
    before = streams.compiled.steps_run
    audio = stream_audio(streams, codes, iter(lambda: 1, None))
    assert streams.compiled.steps_run - before >= 25  # each step from the 12th on, to the end
    for key, c in codes.items():
        assert_audio_close(audio[key], one_shot(model, c), tol=STREAM_TOL)


def test_streams_move_between_compiled_and_eager_steps(model, streams):
    """Push sizes that were not compiled (2, 3 frames) and joins, which make a step unsteady,
    run eagerly in between compiled steps, on the same state."""
    sizes = [1] * 14 + [3, 1, 2, 1, 1, 2] + [1] * 40
    codes = {"a": random_codes(3, 50)}
    before = streams.compiled.steps_run
    audio = stream_audio(streams, codes, iter(sizes))
    assert streams.compiled.steps_run > before
    assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)
    # A stream joining a steady one: both decode exactly, compiled again once both are steady.
    first = streams.add()
    codes_first, codes_second = random_codes(4, 40), random_codes(5, 25)
    pieces = {first: []}
    for f in range(15):
        streams.push(first, codes_first[:, f : f + 1])
        pieces[first].append(streams.step()[first])
    second = streams.add()
    pieces[second] = []
    for f in range(15, 40):
        streams.push(first, codes_first[:, f : f + 1])
        streams.push(second, codes_second[:, f - 15 : f - 14])
        for stream_id, piece in streams.step().items():
            pieces[stream_id].append(piece)
    for stream_id in (first, second):
        streams.end(stream_id)
    for stream_id, piece in streams.step().items():
        pieces[stream_id].append(piece)
    assert_audio_close(torch.cat(pieces[first]), one_shot(model, codes_first), tol=STREAM_TOL)
    assert_audio_close(torch.cat(pieces[second]), one_shot(model, codes_second), tol=STREAM_TOL)


def test_compiled_steps_are_shared_by_other_decoders(model, streams):
    """One compilation serves many decoders of the model (a server's lookaheads, a
    `StreamingDecoder` per utterance), and refuses those of another model."""
    codes = random_codes(8, 30)
    before = streams.compiled.steps_run
    decoder = StreamingDecoder(model, compiled=streams.compiled)
    audio = torch.cat([decoder.push(codes[:, f : f + 1]) for f in range(codes.shape[1])] + [decoder.flush()])
    assert streams.compiled.steps_run - before >= 15
    assert_audio_close(audio, one_shot(model, codes), tol=STREAM_TOL)
    with pytest.raises(ValueError, match="another model"):
        DecoderStreams(load_model("tiny-24k"), compiled=streams.compiled)


def test_decoders_in_threads_share_the_compiled_steps_safely(model, streams):
    """torch.compile's stance is global: two threads stepping at once must neither leave it
    refusing every other compile, nor wait for each other (one goes eager), and each gets its
    one-shot audio."""
    results, errors = {}, []

    def decode(seed: int) -> None:
        try:
            for rep in range(2):
                codes = random_codes(seed + rep, 30)
                decoder = StreamingDecoder(model, compiled=streams.compiled)
                audio = torch.cat([decoder.push(codes[:, f : f + 1]) for f in range(30)] + [decoder.flush()])
                results[seed + rep] = (audio, codes)
        except Exception as error:  # reported below, with the thread's traceback lost
            errors.append(error)

    threads = [threading.Thread(target=decode, args=(100 * k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for audio, codes in results.values():
        with torch.inference_mode():
            assert_audio_close(audio, one_shot(model, codes), tol=STREAM_TOL)
    assert torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]


def test_changed_weights_run_eagerly_until_compiled_again(model, streams):
    codes = {"a": random_codes(6, 30)}
    with torch.no_grad():
        model.acoustic_decoder.conv2.weight.mul_(0.5)  # in place: the same storage
    try:
        with pytest.warns(UserWarning, match="weights changed"):
            before = streams.compiled.steps_run
            audio = stream_audio(streams, codes, iter(lambda: 1, None))
        assert streams.compiled.steps_run == before
        assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)
        streams.compile(batch_sizes=(1,), frames=(1,))
        audio = stream_audio(streams, codes, iter(lambda: 1, None))
        assert streams.compiled.steps_run > before
        assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)
    finally:
        with torch.no_grad():
            model.acoustic_decoder.conv2.weight.mul_(2.0)


def test_weight_changes_that_no_version_counter_sees():
    """Weights made under inference mode keep no version counter: `load_state_dict` in place
    is seen all the same (its hook), and `invalidate` covers an in-place change there."""
    with torch.inference_mode():
        model = copy.deepcopy(load_model("tiny-24k"))
    assert all(p.is_inference() for p in model.acoustic_decoder.parameters())
    streams = DecoderStreams(model)
    streams.compile(batch_sizes=(1,), frames=(1,))
    changed = dict(model.state_dict())
    changed["acoustic_decoder.conv2.bias"] = changed["acoustic_decoder.conv2.bias"] + 0.25
    codes = {"a": random_codes(7, 20)}
    with torch.inference_mode():
        model.load_state_dict(changed)
        with pytest.warns(UserWarning, match="weights changed"):
            audio = stream_audio(streams, codes, iter(lambda: 1, None))
        assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)
        streams.compile(batch_sizes=(1,), frames=(1,))
        before = streams.compiled.steps_run
        model.acoustic_decoder.conv2.bias.add_(0.25)  # unseen: same storage, no version
        streams.compiled.invalidate()
        audio = stream_audio(streams, codes, iter(lambda: 1, None))
        assert streams.compiled.steps_run == before
        assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)
        # A weight that goes (a bias set to None) is a change too.
        streams.compile(batch_sizes=(1,), frames=(1,))
        before = streams.compiled.steps_run
        model.acoustic_decoder.conv2.bias = None
        with pytest.warns(UserWarning, match="weights changed"):
            audio = stream_audio(streams, codes, iter(lambda: 1, None))
        assert streams.compiled.steps_run == before
        assert_audio_close(audio["a"], one_shot(model, codes["a"]), tol=STREAM_TOL)


def test_compile_refuses_bad_shapes(model):
    streams = DecoderStreams(model)
    with pytest.raises(ValueError, match="positive"):
        streams.compile(batch_sizes=(0,), frames=(1,))
