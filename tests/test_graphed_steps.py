"""Streaming steps as CUDA graphs. On the CPU the same class runs its steps without
capturing them, which checks everything but the capture: the graph's buffers, copying
histories in only when other streams step, the states owning copies of the outputs,
changed weights. The capture itself runs where a GPU is."""

import copy
import itertools

import pytest
import torch
from helpers import assert_audio_close, load_model
from test_compiled_steps import one_shot, random_codes, stream_audio
from test_streaming import STREAM_TOL

from higgs_tokenizer import graphed_steps
from higgs_tokenizer.decoder_streams import DecoderStreams, StreamingDecoder
from higgs_tokenizer.graphed_steps import GraphedSteps
from higgs_tokenizer.streaming import decode_step


@pytest.fixture(scope="module")
def model():
    return copy.deepcopy(load_model("tiny-24k"))  # one test changes its weights


def test_graphs_need_a_cuda_model(model):
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        DecoderStreams(model).capture_graphs()
    with pytest.raises(ValueError, match="positive"):
        GraphedSteps(model, graphs=False).capture(batch_sizes=(0,))


@torch.inference_mode()
def test_graphed_steps_give_the_eager_audio(model, monkeypatch):
    graphs = GraphedSteps(model, graphs=False)
    graphs.capture(batch_sizes=(1, 2), frames=(1, 3))
    copies_in = []
    real_copy = graphed_steps._Graph.run

    def run(self, buffers, latents):
        last = self._last
        copies_in.append(last is None or any(buffers[n] is not last[n] for n in last))
        return real_copy(self, buffers, latents)

    monkeypatch.setattr(graphed_steps._Graph, "run", run)
    codes = {"a": random_codes(1, 30), "b": random_codes(2, 24)}
    # Two streams in 1-frame steps, then b alone (it ends first, a goes on): both shapes.
    graphed = stream_audio(DecoderStreams(model, graphs=graphs), codes, itertools.repeat(1))
    eager = stream_audio(DecoderStreams(model), codes, itertools.repeat(1))
    for key, c in codes.items():
        assert torch.equal(graphed[key], eager[key])
        assert_audio_close(graphed[key], one_shot(model, c), tol=STREAM_TOL)
    # Steady steps ran graphed: those of both streams, then of a alone. The histories were
    # copied in only when the batch changed (first, and when b left), not at each step.
    assert graphs.steps_run >= 15 and 1 <= sum(copies_in) <= 3 and len(copies_in) == graphs.steps_run
    # 3-frame pushes, through the graph of 3-frame steps.
    decoder = StreamingDecoder(model, graphs=graphs)
    pieces = [decoder.push(codes["a"][:, i : i + 3]) for i in range(0, 30, 3)]
    pieces.append(decoder.flush())
    assert torch.equal(torch.cat(pieces), stream_audio(DecoderStreams(model), {"a": codes["a"]}, itertools.repeat(3))["a"])


@torch.inference_mode()
def test_fewer_streams_run_in_a_larger_graph_and_states_stay_their_own(model):
    """Three streams step in the graph of four (a padding row), one sits out a while, and a
    state saved mid-way continues as its stream did: nothing a state holds is written by a
    later replay."""
    assert graphed_steps.bucket_sizes(1) == [1] and graphed_steps.bucket_sizes(6) == [1, 2, 4, 6]
    graphs = GraphedSteps(model, graphs=False)
    graphs.capture(batch_sizes=(4,), frames=(1,))
    streams = DecoderStreams(model, graphs=graphs)
    ids = [streams.add() for _ in range(3)]
    codes = {i: random_codes(10 + i, 24) for i in ids}
    out = {i: [] for i in ids}
    saved = None
    for f in range(24):
        for i in ids:
            if not (i == ids[2] and 14 <= f < 17):  # the third sits out three steps, then catches up
                streams.push(i, codes[i][:, f : f + 1])
            elif f == 16:
                streams.push(i, codes[i][:, 14:17])
        for i, piece in streams.step().items():
            out[i].append(piece)
        if f == 15:
            saved = streams._streams[ids[0]].state.branch()  # shares the tensors its stream holds
    assert graphs.steps_run >= 10
    for i in ids:
        streams.end(i)
    for i, piece in streams.step().items():
        out[i].append(piece)
    for i in ids:
        assert_audio_close(torch.cat(out[i]), one_shot(model, codes[i]), tol=STREAM_TOL)
    # The saved state, stepped on alone (eagerly), gives what its stream gave after it.
    first = codes[ids[0]]
    after = torch.cat(decode_step(model, streams.plan, [saved], first[None, :, 16:]) + decode_step(model, streams.plan, [saved], None))
    assert_audio_close(after, torch.cat(out[ids[0]])[-len(after) :], tol=STREAM_TOL)


@torch.inference_mode()
def test_two_groups_of_one_shape_share_a_graph(model):
    """Streams of 8 and of 4 quantizers step in two batches of the same shape, one after the
    other, through the same graph: each gets its own audio."""
    graphs = GraphedSteps(model, graphs=False)
    graphs.capture(batch_sizes=(2,), frames=(1,))
    codes = {"a": random_codes(3, 20), "b": random_codes(4, 20), "c": random_codes(5, 20, 4), "d": random_codes(6, 20, 4)}
    audio = stream_audio(DecoderStreams(model, graphs=graphs), codes, itertools.repeat(1))
    assert graphs.steps_run > 10
    for key, c in codes.items():
        assert_audio_close(audio[key], one_shot(model, c), tol=STREAM_TOL)


@torch.inference_mode()
def test_changed_weights_drop_the_graphs(model):
    graphs = GraphedSteps(model, graphs=False)
    graphs.capture(batch_sizes=(1,), frames=(1,))
    codes = random_codes(7, 16)
    stream_audio(DecoderStreams(model, graphs=graphs), {"a": codes}, itertools.repeat(1))
    assert graphs.steps_run > 0 and graphs.shapes == {(1, 1)}
    with torch.no_grad():
        model.acoustic_decoder.conv2.weight.mul_(0.5)
    before = graphs.steps_run
    with pytest.warns(UserWarning, match="changed since its streaming steps were captured"):
        audio = stream_audio(DecoderStreams(model, graphs=graphs), {"a": codes}, itertools.repeat(1))["a"]
    assert graphs.steps_run == before and graphs.shapes == set()
    assert_audio_close(audio, one_shot(model, codes), tol=STREAM_TOL)
    graphs.capture(batch_sizes=(1,), frames=(1,))  # captured anew, with the new weights
    assert_audio_close(stream_audio(DecoderStreams(model, graphs=graphs), {"a": codes}, itertools.repeat(1))["a"],
                       one_shot(model, codes), tol=STREAM_TOL)
    assert graphs.steps_run > before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.inference_mode()
def test_captured_graphs_on_a_gpu():
    model = load_model("tiny-24k", device="cuda")
    streams = DecoderStreams(model)
    streams.capture_graphs(batch_sizes=(1, 2), frames=(1,))
    codes = {"a": random_codes(8, 30), "b": random_codes(9, 24)}
    graphed = stream_audio(streams, codes, itertools.repeat(1))
    eager = stream_audio(DecoderStreams(model), codes, itertools.repeat(1))
    uncaptured = GraphedSteps(model, graphs=False)  # the same steps, run without capture
    uncaptured.capture(batch_sizes=(1, 2), frames=(1,))
    stream_audio(DecoderStreams(model, graphs=uncaptured), codes, itertools.repeat(1))
    assert streams.graphs.steps_run == uncaptured.steps_run > 0  # every steady step was a replay
    for key, c in codes.items():
        assert_audio_close(graphed[key], eager[key], tol=1e-5)
        assert_audio_close(graphed[key], one_shot(model, c.cuda()).cpu(), tol=STREAM_TOL)
