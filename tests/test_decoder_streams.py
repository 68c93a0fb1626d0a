"""Many streams decoded together, each with its own state: joins, leaves, idle streams,
bad input, copies and resets, lower-latency lookahead."""

import numpy as np
import pytest
import torch
from helpers import assert_audio_close, load_model
from test_streaming import STREAM_TOL

from higgs_tokenizer import decoder_streams, streaming
from higgs_tokenizer.decoder_streams import DecoderStreams
from higgs_tokenizer.streaming import decode_step


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-24k")


def random_codes(seed: int, num_quantizers: int, frames: int) -> torch.Tensor:
    return torch.randint(0, 1024, (num_quantizers, frames), generator=torch.Generator().manual_seed(seed))


def decoded_alone(model, codes: torch.Tensor) -> torch.Tensor:
    return model.decode(codes[None]).audio_values[0, 0]


@torch.inference_mode()
def test_property_random_push_sizes_and_quantizer_counts(model):
    """Any sequence of pushes, 1 to 8 quantizers, several streams stepping together: each
    stream's audio is its one-shot decoding."""
    rng = np.random.default_rng(7)
    for trial in range(6):
        streams = DecoderStreams(model)
        codes = {streams.add(): random_codes(100 * trial + i, int(rng.integers(1, 9)), int(rng.integers(1, 40))) for i in range(3)}
        sent = {i: 0 for i in codes}
        audio = {i: [] for i in codes}
        while any(sent[i] < c.shape[1] for i, c in codes.items()):
            for i, c in codes.items():
                if sent[i] < c.shape[1] and rng.random() < 0.7:
                    size = int(rng.integers(1, 12))
                    streams.push(i, c[:, sent[i] : sent[i] + size])
                    sent[i] = min(c.shape[1], sent[i] + size)
                    if sent[i] == c.shape[1]:
                        streams.end(i)
            for i, piece in streams.step().items():
                audio[i].append(piece)
        for i, piece in streams.step().items():
            audio[i].append(piece)
        for i, c in codes.items():
            assert_audio_close(torch.cat(audio[i]), decoded_alone(model, c), tol=STREAM_TOL)


@torch.inference_mode()
def test_streams_join_and_leave_and_idle_ones_cost_nothing(model, monkeypatch):
    calls = []
    real = decoder_streams.decode_step
    monkeypatch.setattr(decoder_streams, "decode_step", lambda m, p, states, c, **kw: calls.append((len(states), c is None)) or real(m, p, states, c, **kw))
    streams = DecoderStreams(model)
    a, b = streams.add(), streams.add()
    codes_a, codes_b, codes_c = random_codes(1, 8, 30), random_codes(2, 8, 10), random_codes(3, 8, 12)
    out = {a: [], b: []}
    for f in range(30):
        streams.push(a, codes_a[:, f : f + 1])
        if f % 3 == 0:  # b pushes a frame every third step and idles in between
            streams.push(b, codes_b[:, f // 3 : f // 3 + 1])
        for i, piece in streams.step().items():
            out.setdefault(i, []).append(piece)
        if f == 10:
            c = streams.add()  # joins mid-way with 12 frames at once, and ends
            streams.push(c, codes_c)
            streams.end(c)
    # One call per step, of the streams with frames waiting: a always, b every third step
    # (never while idle), c on the step after it joined (a frame, as the others), then a
    # second call in that step in which c alone catches up (its 11 other frames); then
    # c's end once.
    expected = []
    for f in range(30):
        expected += [(1 + (f % 3 == 0) + (f == 11), False)] + [(1, False)] * (f == 11)
    assert [call for call in calls if not call[1]] == expected and sum(end for _, end in calls) == 1
    streams.end(a)
    streams.end(b)
    for i, piece in streams.step().items():
        out[i].append(piece)
    assert_audio_close(torch.cat(out[a]), decoded_alone(model, codes_a), tol=STREAM_TOL)
    assert_audio_close(torch.cat(out[b]), decoded_alone(model, codes_b), tol=STREAM_TOL)
    assert_audio_close(torch.cat(out[c]), decoded_alone(model, codes_c), tol=STREAM_TOL)
    streams.remove(a)
    assert a not in streams.stream_ids
    calls.clear()
    d, e = streams.add(), streams.add()
    streams.push(d, codes_a[:, :2])
    streams.push(e, codes_b[:, :3])
    streams.step()
    # Both advance by the fewest frames waiting, in one call; e's one frame more waits.
    assert calls == [(2, False)] and streams.frames_waiting(e) == 1
    streams.step()
    assert calls == [(2, False), (1, False)]  # then e alone takes it
    with pytest.raises(KeyError, match=f"no stream with id {a}"):
        streams.push(a, codes_a[:, :1])


@torch.inference_mode()
def test_a_stream_that_fell_behind_catches_up(model):
    """A stream with a backlog, beside streams that get a frame a step, catches up (at most
    max_frames_per_step more a step) instead of staying behind for good; lookahead audio
    still comes for it, and every stream's audio is its one-shot decoding."""
    for lookahead, most in ((None, None), (None, 5), (4, 5)):
        streams = DecoderStreams(model, lookahead_frames=lookahead, max_frames_per_step=most)
        a, b = streams.add(), streams.add()
        codes = torch.stack([random_codes(40, 8, 40), random_codes(41, 8, 40)])
        out = {a: [], b: []}
        streams.push(a, codes[0, :, :20])  # a burst: a is 20 frames ahead of what b has
        for f in range(20):
            streams.push_batch([a, b], torch.stack([codes[0, :, 20 + f : 21 + f], codes[1, :, f : f + 1]]))
            decoded = streams.frames_decoded(a)
            for i, piece in streams.step().items():
                out[i].append(piece)
            behind = streams.frames_waiting(a)
            # A catch-up call takes what the step's limit leaves: most - 1 after the shared frame.
            assert behind == (0 if most is None else max(0, 20 - (most - 1) * (f + 1))), (lookahead, most, f)
            assert most is None or streams.frames_decoded(a) - decoded <= most
            if streams.frames_decoded(a) - decoded > 1:  # a caught up, leaving the first call's
                batch = streams._streams[b].state.batch  # batch: b holds a copy of its own row
                assert batch.size == 1 and batch is not streams._streams[a].state.batch
            if lookahead is not None:  # the provisional audio reaches the lookahead every step
                assert sum(map(len, out[a])) == (streams.frames_decoded(a) - lookahead) * model.config.hop_length
        for i in (a, b):
            streams.end(i)
        for i, piece in streams.step().items():
            out[i].append(piece)
        if lookahead is None:
            assert_audio_close(torch.cat(out[a]), decoded_alone(model, codes[0]), tol=STREAM_TOL)
            assert_audio_close(torch.cat(out[b]), decoded_alone(model, codes[1, :, :20]), tol=STREAM_TOL)


@torch.inference_mode()
def test_a_steady_batch_is_not_copied_and_idle_streams_let_it_go(model, monkeypatch):
    """Steps of the same streams take the last step's batch of histories as it is (no tensor
    operation per stream); a stream that sits out takes its own copy, so the old batch can go."""
    copies = []
    real_stack, real_pick = streaming._stack, streaming._pick
    monkeypatch.setattr(streaming, "_stack", lambda *args: copies.append("stack") or real_stack(*args))
    monkeypatch.setattr(streaming, "_pick", lambda *args: copies.append("pick") or real_pick(*args))
    streams = DecoderStreams(model)
    a, b, c = ids = [streams.add() for _ in range(3)]
    codes = {i: random_codes(20 + i, 8, 16) for i in ids}
    out = {i: [] for i in ids}
    sent = dict.fromkeys(ids, 0)

    def step(pushing, expected_copies):
        for i in pushing:
            streams.push(i, codes[i][:, sent[i] : sent[i] + 1])
            sent[i] += 1
        copies.clear()
        for i, piece in streams.step().items():
            out[i].append(piece)
        assert bool(copies) == expected_copies
        return {i: streams._streams[i].state.batch for i in ids}

    step(ids, True)  # new streams: their zero histories stacked
    for _ in range(4):
        batches = step(ids, False)
        assert batches[a] is batches[b] is batches[c] is not None and batches[a].size == 3
    batches = step([a, b], True)  # c sits out: a and b are picked, c takes a copy of its rows
    assert batches[a] is batches[b] and batches[a].size == 2 and batches[c].size == 1
    batches = step([a, b], False)
    batches = step(ids, True)  # c joins again
    assert batches[a] is batches[c] and batches[a].size == 3
    for _ in range(4):
        step(ids, False)
    for k in range(4):  # c is done; a and b go on without it
        step([a, b], k == 0)
    for i in ids:
        streams.end(i)
    for i, piece in streams.step().items():
        out[i].append(piece)
    for i in ids:
        assert_audio_close(torch.cat(out[i]), decoded_alone(model, codes[i][:, : sent[i]]), tol=STREAM_TOL)


@torch.inference_mode()
def test_bad_input_leaves_the_stream_usable(model):
    streams = DecoderStreams(model)
    s = streams.add()
    codes = random_codes(4, 6, 20)
    streams.push(s, codes[:, :5])
    pieces = [streams.step()[s]]
    refused = {
        "this stream has 6": codes[:4, 5:6],  # another quantizer count mid-stream
        "must lie in \\[0, 1024\\)": torch.full((6, 1), 1025),
        "integer tensor": codes[:, 5:6].float(),
        "shape \\[n_q, frames\\]": codes[None, :, 5:6],
    }
    for match, bad in refused.items():
        with pytest.raises((ValueError, TypeError), match=match):
            streams.push(s, bad)
    assert streams.frames_waiting(s) == 0 and streams.frames_decoded(s) == 5
    streams.push(s, codes[:, 5:])
    streams.end(s)
    pieces.append(streams.step()[s])
    assert_audio_close(torch.cat(pieces), decoded_alone(model, codes), tol=STREAM_TOL)
    with pytest.raises(RuntimeError, match="has ended"):
        streams.push(s, codes[:, :1])
    with pytest.raises(KeyError, match="no stream with id 99"):
        streams.end(99)
    with pytest.raises(ValueError, match="lookahead_frames must be from 0 to 10"):
        DecoderStreams(model, lookahead_frames=11)


@torch.inference_mode()
def test_push_batch_is_each_push_and_refuses_all_or_nothing(model):
    """A batch of streams' frames pushed at once gives each stream the audio that pushing
    them one by one gives, bit for bit; a batch refused for any one stream queues nothing."""
    codes = torch.stack([random_codes(20 + i, 8, 12) for i in range(3)])  # [streams, n_q, frames]
    one_by_one, batched = DecoderStreams(model), DecoderStreams(model)
    ids_a = [one_by_one.add() for _ in range(3)]
    ids_b = [batched.add() for _ in range(3)]
    out_a, out_b = {i: [] for i in ids_a}, {i: [] for i in ids_b}
    for f in range(0, 12, 3):
        for i, stream_id in enumerate(ids_a):
            one_by_one.push(stream_id, codes[i, :, f : f + 3])
        batched.push_batch(ids_b, codes[:, :, f : f + 3])
        for out, piece in ((out_a, one_by_one.step()), (out_b, batched.step())):
            for stream_id, audio in piece.items():
                out[stream_id].append(audio)
    for stream_id in ids_b:
        batched.end(stream_id)
    for stream_id, audio in batched.step().items():
        out_b[stream_id].append(audio)
    for i, (a, b) in enumerate(zip(ids_a, ids_b)):
        assert torch.equal(torch.cat(out_a[a]), torch.cat(out_b[b][:-1]))
        assert_audio_close(torch.cat(out_b[b]), decoded_alone(model, codes[i]), tol=STREAM_TOL)

    streams = DecoderStreams(model)
    a, b, ended = streams.add(), streams.add(), streams.add()
    streams.push(a, codes[0, :6, :2])  # a has 6 quantizers from now on
    streams.end(ended)
    streams.step()
    refused = {
        "this stream has 6 \\(stream 0\\)": ([a, b], codes[:2, :, :1]),
        "must lie in \\[0, 1024\\)": ([b], torch.full((1, 8, 1), -1)),
        "shape \\[2 streams, n_q, frames\\]": ([a, b], codes[:3, :6, :1]),
        "more than once": ([b, b], codes[:2, :, :1]),
        "has ended": ([b, ended], codes[:2, :, :1]),
        "no stream with id 99": ([b, 99], codes[:2, :, :1]),
    }
    for match, (ids, bad) in refused.items():
        with pytest.raises((ValueError, RuntimeError, KeyError), match=match):
            streams.push_batch(ids, bad)
        assert streams.frames_waiting(a) == 0 and streams.frames_waiting(b) == 0, match
    streams.push_batch([], codes[:0])  # no streams: nothing to do
    streams.push_batch([b, a], codes[:2, :6, 2:4])
    assert streams.frames_waiting(a) == streams.frames_waiting(b) == 2


@torch.inference_mode()
def test_state_copies_are_independent_and_reset_starts_again(model):
    streams = DecoderStreams(model)
    s = streams.add()
    codes = random_codes(5, 8, 16)
    streams.push(s, codes[:, :8])
    streams.step()
    saved = streams.state(s)
    streams.push(s, codes[:, 8:])
    second = streams.step()[s]
    assert saved.frames == 8 and streams.frames_decoded(s) == 16
    assert saved.nbytes == streams.state(s).nbytes > 0
    # Each copy of the saved state continues as the stream did, whatever the others did.
    first_copy, second_copy = saved.branch(), saved.copy()
    for state in (first_copy, second_copy, saved):
        assert torch.equal(decode_step(model, streams.plan, [state], codes[None, :, 8:])[0], second)
    assert first_copy.frames == 16 and streams.state(s).frames == 16
    streams.reset(s)
    other = random_codes(6, 8, 9)
    streams.push(s, other)
    streams.end(s)
    assert_audio_close(streams.step()[s], decoded_alone(model, other), tol=STREAM_TOL)


@torch.inference_mode()
def test_lookahead_gives_audio_sooner(model):
    codes = random_codes(8, 8, 24)
    hop = model.config.hop_length
    assert DecoderStreams(model).step() == {}  # nothing to do, nothing decoded
    for lookahead in (0, 4, 10):
        streams = DecoderStreams(model, lookahead_frames=lookahead)
        s = streams.add()
        pieces = []
        for f in range(codes.shape[1]):
            streams.push(s, codes[:, f : f + 1])
            pieces.append(streams.step()[s])
            given = sum(len(p) for p in pieces)
            assert given == max((f + 1) * hop - streams.plan.latency_samples, (f + 1 - lookahead) * hop, 0)
            if lookahead < 10 and len(pieces[-1]):  # the audio of the codes so far, as if they ended here
                so_far = decoded_alone(model, codes[:, : f + 1])
                assert_audio_close(pieces[-1], so_far[given - len(pieces[-1]) : given], tol=STREAM_TOL)
        streams.end(s)
        pieces.append(streams.step()[s])
        audio = torch.cat(pieces)
        assert audio.shape == (codes.shape[1] * hop,)
        reference = decoded_alone(model, codes)
        if lookahead == 10:
            assert_audio_close(audio, reference, tol=STREAM_TOL)
        else:  # provisional samples, never revised: close to the exact audio, not equal
            assert not torch.allclose(audio, reference, atol=1e-5 * float(reference.abs().max()))
            assert float((audio - reference).norm() / reference.norm()) < 1.0
