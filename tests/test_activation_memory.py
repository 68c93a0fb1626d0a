"""The acoustic encoder's and decoder's peak memory, in units of their largest activations (64
channels at 24 kHz in the encoder's first block, 32 in the decoder's last at full size): in a
padded batch too, the encoder keeps at most three alive at once, the decoder three and a half;
HuBERT's feature encoder at most three of its first conv's outputs (512 channels at 3.2 kHz).

Counted by the tensors the model's operations make (a dispatch mode sees each one, and a
weak reference says when it dies), in units of one first-block activation: what a batch's
peak is made of on any device, apart from what a conv allocates inside itself (oneDNN's
reorders on the CPU, cuDNN's workspace on a GPU), and whatever the allocator keeps.
"""

import weakref

import torch
from helpers import load_model
from torch.utils._python_dispatch import TorchDispatchMode


class LiveOutputs(TorchDispatchMode):
    """Bytes of the storages that operations made and that are still referenced; the peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list] = {}  # storage address -> [bytes, tensors alive]
        self.bytes = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [storage.nbytes(), 0]
            self.bytes += entry[0]
            self.peak = max(self.peak, self.bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live[address]
        entry[1] -= 1
        if entry[1] == 0:
            self.bytes -= entry[0]
            del self.live[address]


def _peak(module, x: torch.Tensor, lengths: list[int], activation_elements: int) -> float:
    """The peak of `module(x, lengths)`'s live outputs, in float32 tensors of `activation_elements`."""
    with torch.inference_mode(), LiveOutputs() as outputs:
        module(x, torch.tensor(lengths))
    return outputs.peak / (4 * activation_elements)


def _noise(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.1


def _first_block_peak(lengths: list[int]) -> float:
    encoder = load_model("tiny-24k").acoustic_encoder
    samples = max(lengths)
    return _peak(encoder, _noise(len(lengths), 1, samples), lengths, len(lengths) * encoder.conv1.out_channels * samples)


def test_the_acoustic_encoder_keeps_at_most_three_first_block_activations():
    # Before: a unit copied its input to zero the padding, and the encoder held each block's
    # input while the block ran (five alive at once; 30 MiB per padded audio second at full size).
    assert _first_block_peak([48_000]) <= 3.2
    assert _first_block_peak([48_000, 30_000, 12_000]) <= 3.2  # a padded batch: zeroed in place


def _last_block_peak(frames: list[int]) -> float:
    model = load_model("tiny-24k")
    decoder = model.acoustic_decoder
    samples = max(frames) * model.config.hop_length
    latents = _noise(len(frames), decoder.conv1.in_channels, max(frames)) * 10
    return _peak(decoder, latents, frames, len(frames) * decoder.conv2.in_channels * samples)


def test_the_acoustic_decoder_keeps_at_most_three_and_a_half_last_block_activations():
    # Its peak is the last upsampling: its input and Snake's output (two thirds each), the
    # phase conv's output and its interleaved copy. Before, 4.4 to 4.7: each block's input was kept
    # alive through the block, and the phase conv's output until the bias was added. (The
    # tiny model's weights are as large as 20 frames' activations: 200 frames here.)
    assert _last_block_peak([200]) <= 3.5
    assert _last_block_peak([200, 130, 40]) <= 3.5


def _hubert_first_layer_peak(lengths: list[int]) -> float:
    features = load_model("tiny-24k").semantic_model.feature_extractor
    conv = features.conv_layers[0].conv
    frames = (max(lengths) - conv.kernel_size[0]) // conv.stride[0] + 1
    return _peak(features, _noise(len(lengths), max(lengths)), lengths, len(lengths) * conv.out_channels * frames)


def test_hubert_feature_encoder_keeps_at_most_three_first_layer_activations():
    # Its group norm, per item in a padded batch, writes into one output (before: each
    # item's piece, padded, then all of them joined: 3.6), and GELU works in place.
    assert _hubert_first_layer_peak([64_000]) <= 3.1
    assert _hubert_first_layer_peak([64_000, 40_000, 16_000]) <= 3.1


def test_the_counter_sees_a_copy():
    """The measure itself: a third tensor as large as the others counts."""
    with torch.inference_mode(), LiveOutputs() as outputs:
        a = torch.ones(1000)
        b = a * 2
        c = b + a
        del b
    assert outputs.peak == 3 * 4000 and c.numel() == 1000
