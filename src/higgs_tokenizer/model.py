"""The Higgs Audio V2 tokenizer: audio → codes → audio.

    encode: waveform ─┬─ resample to 16 kHz → HuBERT → mean of hidden states → every k-th frame → SemanticEncoder ─┐
                      └─ AcousticEncoder ──────────────────────────────────────────────────────────────────────┴─ concat → fc → RVQ → codes
    decode: codes → RVQ sum → fc2 → AcousticDecoder → waveform

The API and every numeric detail follow transformers' `HiggsAudioV2TokenizerModel`
(5.23), which the fixtures pin down; where Boson AI's original differs (the
length rule) both behaviours are offered.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .acoustic import AcousticDecoder, AcousticEncoder
from .checkpoint import load_pretrained, save_pretrained
from .config import LENGTH_RULES, HiggsAudioV2TokenizerConfig
from .hubert import HubertModel
from .layers import Snake1d, conv_stack_output_length, derived_tensor, snake_reference, zero_padding
from .quantizer import ResidualVectorQuantizer, codebooks_sha256
from .resampling import resample
from .runtime import float32_math, precision_name, precision_settings, tune_cpu_allocator
from .semantic import SemanticDecoder, SemanticEncoder

# HuBERT sees 160 zeros (10 ms at 16 kHz) on each side, centring its 20 ms frames.
SEMANTIC_PADDING = 160


class ModelOutput:
    """Dataclass outputs that also index like tuples (`out[0]`) and dicts (`out["audio_codes"]`)."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


@dataclass
class HiggsAudioV2TokenizerEncoderOutput(ModelOutput):
    audio_codes: torch.Tensor | None = None
    # With a padding mask: each item's number of code frames (later frames are padding, set to 0).
    code_lengths: torch.Tensor | None = None


@dataclass
class HiggsAudioV2TokenizerDecoderOutput(ModelOutput):
    audio_values: torch.Tensor | None = None


@dataclass
class HiggsAudioV2TokenizerOutput(ModelOutput):
    audio_codes: torch.Tensor | None = None
    audio_values: torch.Tensor | None = None


_WIDE_UNSIGNED = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name))


class HiggsAudioV2TokenizerModel(nn.Module):
    # On a GPU, float32 runs in full float32 (cuDNN would use TF32, which moves some codes
    # and adds about 1e-3 of error to the audio); set True to trade that for speed.
    allow_tf32: bool = False

    def __init__(self, config: HiggsAudioV2TokenizerConfig):
        super().__init__()
        self.config = config
        self.acoustic_encoder = AcousticEncoder(config.acoustic_model_config)
        self.acoustic_decoder = AcousticDecoder(config.acoustic_model_config)
        self.semantic_model = HubertModel(config.semantic_model_config)
        self.encoder_semantic = SemanticEncoder(config)
        self.decoder_semantic = SemanticDecoder(config)
        self.fc = nn.Linear(config.hidden_size, config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, config.semantic_hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, config.acoustic_model_config.hidden_size)
        self.quantizer = ResidualVectorQuantizer(
            config.num_quantizers, config.hidden_size, config.codebook_size, config.codebook_dim
        )
        self.num_quantizers = config.num_quantizers  # the most codebooks a code frame has
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device_map=None,
        device=None,
        dtype=None,
        torch_dtype=None,
        precision: str | None = None,
        length_rule: str | None = None,
        **options,
    ) -> "HiggsAudioV2TokenizerModel":
        """Load a checkpoint: a local directory or a Hub id, in transformers or original format.

        `device_map`/`device`: where the weights go ("cpu", "cuda", "cuda:1", a
        torch.device, or "auto" for the first GPU when there is one). `dtype`
        (or its older name `torch_dtype`): a torch dtype or its name, or "auto"
        for the checkpoint's; the default is float32 (transformers defaults to
        "auto", which is float32 for every published checkpoint). `precision`: a mode
        instead of a dtype, "float32", "tf32", "bfloat16" or "float16" (see
        `with_precision`). `length_rule`:
        "transformers" (default) or "original" (see `encode`). `options`: the Hub
        options (`checkpoint_files.HUB_OPTIONS`) and config fields to replace. On the
        CPU, loading also tunes the process's allocator for large tensors
        (`runtime.tune_cpu_allocator`).
        """
        dtype = dtype if dtype is not None else torch_dtype
        allow_tf32 = None
        if precision is not None:
            if dtype is not None:
                raise ValueError(f"give precision or dtype, not both (got {precision!r} and {dtype!r})")
            dtype, allow_tf32 = precision_settings(precision)
        model = load_pretrained(
            cls,
            name_or_path,
            device=_resolve_device(device_map if device is None else device),
            dtype=dtype,
            length_rule=length_rule,
            **options,
        )
        if allow_tf32 is not None:
            model.allow_tf32 = allow_tf32
        if model.device.type == "cpu":
            tune_cpu_allocator()
        return model

    @property
    def precision(self) -> str:
        """The numeric mode: "float32", "tf32", "bfloat16" or "float16"."""
        return precision_name(self.dtype, self.allow_tf32)

    def with_precision(self, precision: str) -> "HiggsAudioV2TokenizerModel":
        """Run in `precision` from now on; returns the model.

        - "float32": full float32 everywhere (on GPUs too: TF32 off), the reference's codes;
        - "tf32": float32 weights, but float32 convs and products on NVIDIA GPUs in TF32
          (faster; some codes change); the same as "float32" on the CPU;
        - "bfloat16", "float16": weights and activations in that type (fastest on GPUs;
          many codes change; CPU kernels differ between instruction sets).
        Casting is lossy: to go back to float32 from a half type, load the checkpoint again.
        """
        dtype, allow_tf32 = precision_settings(precision)
        self.to(dtype=dtype)
        self.allow_tf32 = allow_tf32
        return self

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a transformers-format checkpoint (config, safetensors, preprocessor config)."""
        save_pretrained(self, directory)

    def compile_kernels(self, **compile_options) -> "HiggsAudioV2TokenizerModel":
        """Fuse each Snake activation into one kernel with `torch.compile` (Triton on a GPU,
        C++ on the CPU; needs a compiler, and the first call of each new shape compiles).

        Off by default: the fused kernel rounds sin differently from eager PyTorch, so
        results move by about one unit in the last place and a code at a near tie may
        change; the benchmark reports how often. Returns the model.
        """
        kernel = torch.compile(snake_reference, dynamic=True, **compile_options)
        for module in self.modules():
            if isinstance(module, Snake1d):
                module.kernel = kernel
        return self

    def codebooks_sha256(self) -> str:
        """The digest that identifies this model's codebooks in codes files: of the codebooks as
        the checkpoint stores them (recorded at load, before any cast), so that codes encoded
        in one dtype decode with the same checkpoint loaded in another."""
        current = codebooks_sha256(q.codebook.embed for q in self.quantizer.quantizers)
        stored, as_loaded = self.__dict__.get("_loaded_codebooks_sha256", (None, None))
        # The stored digest stands only while the codebooks are those that were loaded.
        return stored if as_loaded == current else current

    def record_loaded_codebooks(self, stored_sha256: str) -> None:
        """Called by the loader once the weights are in place, with the digest of the codebooks
        as the checkpoint stores them."""
        current = codebooks_sha256(q.codebook.embed for q in self.quantizer.quantizers)
        self.__dict__["_loaded_codebooks_sha256"] = (stored_sha256, current)

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    # --------------------------------------------------------------- encoding
    def semantic_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Averaged HuBERT hidden states at the code frame rate, `[B, frames, semantic_hidden]`."""
        return self._semantic_features(input_values, None)[0]

    def _semantic_features(self, input_values: torch.Tensor, lengths: torch.Tensor | None):
        config = self.config
        waveform = resample(zero_padding(input_values, lengths)[:, 0, :], config.sample_rate, config.semantic_sample_rate)
        if lengths is not None:
            # Each item's resampled length; the filter's tail past it would not exist alone,
            # where HuBERT's zero padding follows instead.
            lengths = self._resampled_length(lengths)
            waveform = zero_padding(waveform[:, None], lengths)[:, 0]
            lengths = lengths + 2 * SEMANTIC_PADDING
        waveform = F.pad(waveform, (SEMANTIC_PADDING, SEMANTIC_PADDING))
        step = config.semantic_downsample_factor
        with torch.no_grad():
            features, frames = self.semantic_model.mean_hidden_state(waveform, lengths, frame_step=step)
        if frames is not None:
            frames = -(-frames // step)
        return features, frames

    def acoustic_padding(self, num_samples: int, length_rule: str | None = None) -> int:
        """Zeros the length rule adds on each side of a waveform of `num_samples` before the
        acoustic encoder (0 when the two branches already give the same frame count)."""
        return self._length_rule_padding(num_samples, self.semantic_frames(num_samples), self._length_rule(length_rule))

    def _length_rule_padding(self, num_samples: int, semantic_frames: int, length_rule: str) -> int:
        """Zeros added on each side of the waveform before the acoustic encoder.

        Both references pad only when the acoustic branch would not give the
        semantic branch's frame count: transformers by hop/2 (480 at 24 kHz),
        the original by 160 × semantic_downsample_factor (320), trimming later.
        """
        if conv_stack_output_length(self.acoustic_encoder, num_samples) == semantic_frames:
            return 0
        if length_rule == "transformers":
            return self.config.hop_length // 2
        return SEMANTIC_PADDING * self.config.semantic_downsample_factor

    def latents(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None, length_rule: str | None = None):
        """Pre-quantization latents `[B, frames, hidden]` (after `fc`) and each item's frame count `[B]`.

        With `padding_mask` (`[B, samples]`, 1 for audio, right padding) every item gets
        exactly what it would get alone (see `valid_length`); frames past an item's count
        are padding.
        """
        length_rule = self._length_rule(length_rule)
        input_values, lengths = self._encoding_input(input_values, padding_mask, length_rule)
        batch = input_values.shape[0]
        sample_counts = lengths.tolist() if lengths is not None else [input_values.shape[-1]] * batch
        semantic_counts = [self.semantic_frames(n) for n in sample_counts]
        pads = [self._length_rule_padding(n, t, length_rule) for n, t in zip(sample_counts, semantic_counts)]
        if lengths is None and len(set(pads)) == 1:
            acoustic_input, acoustic_lengths = F.pad(input_values, (pads[0], pads[0])), None
        else:
            # Each item padded by its own rule, then right-padded to the batch.
            acoustic_lengths = torch.tensor([n + 2 * p for n, p in zip(sample_counts, pads)])
            acoustic_input = input_values.new_zeros(batch, 1, int(acoustic_lengths.max()))
            for i, (n, p) in enumerate(zip(sample_counts, pads)):
                acoustic_input[i, :, p : p + n] = input_values[i, :, :n]
        return self._branch_latents(input_values, lengths, acoustic_input, acoustic_lengths, length_rule)

    def valid_length(self, num_samples, length_rule: str | None = None):
        """The samples a clip of `num_samples` is encoded from when it is encoded alone
        (an int, or a tensor of per-item lengths).

        Under the transformers rule a clip alone is what the feature extractor makes of it:
        right-padded with zeros to a whole hop, so `model(**feature_extractor(clip))` is the
        reference's forward pass. Under the original rule it is the clip as it is: Boson AI's
        `encode` takes unpadded audio. Masked batches, the high-level API, long recordings
        and the corpus pipeline all encode each clip at this length.
        """
        if self._length_rule(length_rule) == "original":
            return num_samples
        hop = self.config.hop_length
        return -(-num_samples // hop) * hop

    def _encoding_input(self, input_values, padding_mask, length_rule: str):
        """The batch that is encoded, and each item's valid length (None: every item fills it).

        With a mask, each item is cut at its mask and extended with zeros to its
        `valid_length`, right-padding the batch where an item's valid length passes its end.
        """
        if padding_mask is None:
            return input_values, None
        audio = self._mask_lengths(input_values, padding_mask)
        lengths = self.valid_length(audio, length_rule)
        input_values = zero_padding(input_values, audio.to(input_values.device))
        width = int(lengths.max())
        if width > input_values.shape[-1]:
            input_values = F.pad(input_values, (0, width - input_values.shape[-1]))
        else:
            input_values = input_values[..., :width]
        return input_values, None if bool((lengths == width).all()) else lengths

    def _branch_latents(self, semantic_input, semantic_lengths, acoustic_input, acoustic_lengths, length_rule: str):
        """Latents from the waveform each branch sees: the acoustic input already carries the
        length rule's padding. Windowed encoding cuts the two from different grids."""
        features, semantic_frames = self._semantic_features(semantic_input, semantic_lengths)
        e_semantic = self.encoder_semantic(features.transpose(1, 2), semantic_frames)
        if semantic_frames is not None:
            semantic_frames = conv_stack_output_length(self.encoder_semantic, semantic_frames)
        e_acoustic = self.acoustic_encoder(acoustic_input, acoustic_lengths)
        batch = semantic_input.shape[0]
        semantic_counts = semantic_frames.tolist() if semantic_frames is not None else [e_semantic.shape[2]] * batch
        acoustic_counts = (
            conv_stack_output_length(self.acoustic_encoder, acoustic_lengths).tolist()
            if acoustic_lengths is not None
            else [e_acoustic.shape[2]] * batch
        )
        for a, t in zip(acoustic_counts, semantic_counts):
            if a != t and length_rule == "transformers":
                # The reference fails here (torch.cat of unequal lengths).
                raise ValueError(
                    f"the input gives {t} semantic and {a} acoustic frames, which the transformers length rule "
                    "cannot reconcile; pad the audio to a multiple of the hop length (the feature extractor does) "
                    "or use length_rule='original'"
                )
        frames = torch.tensor([min(a, t) for a, t in zip(acoustic_counts, semantic_counts)])
        width = int(frames.max())
        embeddings = torch.cat([e_acoustic[..., :width], e_semantic[..., :width]], dim=1)
        return self.fc(embeddings.transpose(1, 2)), frames

    def encode(
        self,
        input_values: torch.Tensor,
        bandwidth: float | None = None,
        return_dict: bool | None = None,
        length_rule: str | None = None,
        padding_mask: torch.Tensor | None = None,
    ):
        """Waveform `[batch, 1, samples]` at `config.sample_rate` → codes `[batch, n_q, frames]` (int64).

        `bandwidth` (kbps) must be one of `config.target_bandwidths`; default the highest.
        `length_rule` overrides `config.length_rule` for this call. `padding_mask`
        (`[batch, samples]`, 1 for audio, 0 for right padding) makes a padded batch exact:
        each item's codes are those of its clip alone, encoded at its `valid_length` (by
        default right-padded to a whole hop, as the feature extractor pads one clip), and
        `code_lengths` says how many frames it has (later frames are 0). Without a mask the
        whole tensor is encoded as audio, as the reference does.
        """
        num_quantizers = self.config.num_quantizers_for_bandwidth(bandwidth)
        input_values = self._check_waveform(input_values)
        self._check_lengths(input_values, padding_mask, length_rule)
        with float32_math(self.device, self.dtype, tf32=self.allow_tf32):
            latents, frames = self.latents(input_values, padding_mask, length_rule)
            codes = self.quantizer.encode(latents, num_quantizers)
        if padding_mask is None:
            return self._wrap(HiggsAudioV2TokenizerEncoderOutput(codes), return_dict)
        codes = zero_padding(codes, frames)
        if not (self.config.return_dict if return_dict is None else return_dict):
            return codes
        return HiggsAudioV2TokenizerEncoderOutput(codes, frames)

    def encode_window(
        self,
        semantic_input: torch.Tensor,
        acoustic_input: torch.Tensor,
        bandwidth: float | None = None,
        length_rule: str | None = None,
    ) -> torch.Tensor:
        """Codes `[batch, n_q, frames]` of one window of a longer recording (see `long_audio`).

        Each branch gets its own cut of the recording: `semantic_input` the recording's
        samples of the window, `acoustic_input` the same span of the recording padded by
        `acoustic_padding` on both sides, so that both lie on the whole recording's frame
        grid. The checks and the float32 guard are those of `encode`.
        """
        length_rule = self._length_rule(length_rule)
        num_quantizers = self.config.num_quantizers_for_bandwidth(bandwidth)
        semantic_input, acoustic_input = self._check_waveform(semantic_input), self._check_waveform(acoustic_input)
        with float32_math(self.device, self.dtype, tf32=self.allow_tf32):
            latents, _ = self._branch_latents(semantic_input, None, acoustic_input, None, length_rule)
            return self.quantizer.encode(latents, num_quantizers)

    # --------------------------------------------------------------- decoding
    def decode(self, audio_codes: torch.Tensor, return_dict: bool | None = None, code_lengths: torch.Tensor | None = None):
        """Codes `[batch, n_q, frames]` (1 ≤ n_q ≤ num_quantizers) → waveform `[batch, 1, frames * hop]`.

        `code_lengths` (`[batch]`, from `encode` with a padding mask): each item is decoded
        as if alone, and its audio past `code_lengths * hop` samples is zero.
        """
        audio_codes = self.check_codes(audio_codes)
        if code_lengths is not None:
            code_lengths = torch.as_tensor(code_lengths, dtype=torch.long).cpu()
            if code_lengths.shape != (audio_codes.shape[0],) or not ((code_lengths >= 1) & (code_lengths <= audio_codes.shape[2])).all():
                raise ValueError(f"code_lengths must hold one length in [1, {audio_codes.shape[2]}] per batch item")
            if bool((code_lengths == audio_codes.shape[2]).all()):
                code_lengths = None
        with float32_math(self.device, self.dtype, tf32=self.allow_tf32):
            latents = self.decoder_latents(audio_codes)
            audio_values = self.acoustic_decoder(latents, code_lengths)
        if code_lengths is not None:
            audio_values = zero_padding(audio_values, code_lengths * self.config.hop_length)
        return self._wrap(HiggsAudioV2TokenizerDecoderOutput(audio_values), return_dict)

    def decoder_latents(self, audio_codes: torch.Tensor) -> torch.Tensor:
        """The acoustic decoder's input `[batch, channels, frames]` for checked codes.

        `fc2(Σ_q project_out_q(codebook_q[code]))` is linear in each quantizer's codeword,
        so it is a sum of table lookups: one table per quantizer of every codeword already
        projected through both layers. The sum of lookups is computed the same way
        whatever the number of frames, so a stream decoded frame by frame gets the bits of
        one-shot decoding (a matrix product's rounding depends on its shape), and it is
        cheaper than the two products.
        """
        tables = self._codeword_tables()
        latents = tables[0][audio_codes[:, 0]]
        for q in range(1, audio_codes.shape[1]):
            latents = latents + tables[q][audio_codes[:, q]]
        return (latents + self.fc2.bias).transpose(1, 2)

    def _codeword_tables(self) -> torch.Tensor:
        """`[n_q, codebook_size, channels]`: fc2 of each quantizer's projected codewords
        (without fc2's bias), computed in float64; cached until a weight changes."""
        quantizers = self.quantizer.quantizers
        weights = [self.fc2.weight] + [t for q in quantizers for t in (q.codebook.embed, q.project_out.weight, q.project_out.bias)]

        def make() -> torch.Tensor:
            fc2 = self.fc2.weight.double().T
            tables = [
                (q.codebook.embed.double() @ q.project_out.weight.double().T + q.project_out.bias.double()) @ fc2
                for q in quantizers
            ]
            return torch.stack(tables).to(self.dtype)

        return derived_tensor(self, "codeword_tables", weights, make)

    def forward(
        self,
        input_values: torch.Tensor,
        audio_codes: torch.Tensor | None = None,
        bandwidth: float | None = None,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        length_rule: str | None = None,
    ):
        """Encode (unless `audio_codes` is given) and decode; audio is cut to the input length.

        With `padding_mask` (`[batch, samples]`, as the feature extractor returns it) each
        item is encoded and decoded exactly as its clip alone (see `valid_length`), and its
        audio past its valid length is zero: for one clip from the feature extractor this is
        the reference's forward pass, and `decode(encode(input_values))` cut to the input.
        (The reference ignores the mask: in a padded batch it encodes the padding as audio.)
        """
        length = input_values.shape[-1]
        code_lengths = None
        if audio_codes is None:
            encoded = self.encode(input_values, bandwidth, return_dict=True, length_rule=length_rule, padding_mask=padding_mask)
            audio_codes, code_lengths = encoded.audio_codes, encoded.code_lengths
        audio_values = self.decode(audio_codes, return_dict=False, code_lengths=code_lengths)[..., :length]
        if padding_mask is not None:
            valid = self.valid_length(self._mask_lengths(input_values, padding_mask), length_rule)
            audio_values = zero_padding(audio_values, valid)
        return self._wrap(HiggsAudioV2TokenizerOutput(audio_codes, audio_values), return_dict)

    # ----------------------------------------------------------- validation
    def min_input_length(self, length_rule: str | None = None) -> int:
        """The shortest waveform (in samples at `config.sample_rate`) that `encode` accepts
        without a mask. A masked item is encoded at its `valid_length`, which is at least a
        hop under the transformers rule: then one sample is enough."""
        length_rule = self._length_rule(length_rule)
        cache = self.__dict__.setdefault("_min_input_length", {})
        if length_rule not in cache:
            n = 1
            while self.code_frames(n, length_rule) < 1:
                n += 1
            cache[length_rule] = n
        return cache[length_rule]

    def shortest_clip(self, length_rule: str | None = None) -> int:
        """The fewest samples a clip needs to be encoded alone, at its `valid_length`: 1 under
        the transformers rule (a clip is padded to a whole hop), `min_input_length` under the
        original rule. The high-level API and the corpus pipeline apply this rule."""
        length_rule = self._length_rule(length_rule)
        cache = self.__dict__.setdefault("_shortest_clip", {})
        if length_rule not in cache:
            n = 1
            while self.code_frames(self.valid_length(n, length_rule), length_rule) < 1:
                n += 1
            cache[length_rule] = n
        return cache[length_rule]

    def code_frames(self, num_samples: int, length_rule: str | None = None) -> int:
        """Code frames `encode` produces for `num_samples`; 0 where the input is too short."""
        length_rule = self._length_rule(length_rule)
        semantic = self.semantic_frames(num_samples)
        if semantic < 1:
            return 0
        pad = self._length_rule_padding(num_samples, semantic, length_rule)
        acoustic = conv_stack_output_length(self.acoustic_encoder, num_samples + 2 * pad)
        if length_rule == "transformers" and acoustic != semantic:
            return 0
        return max(0, min(acoustic, semantic))

    def semantic_frames(self, num_samples: int) -> int:
        """Frames the semantic branch gives for `num_samples` samples (0: too short)."""
        padded = self._resampled_length(num_samples) + 2 * SEMANTIC_PADDING
        hubert_frames = conv_stack_output_length(self.semantic_model.feature_extractor, padded)
        if hubert_frames < 1:
            return 0
        return conv_stack_output_length(self.encoder_semantic, -(-hubert_frames // self.config.semantic_downsample_factor))

    def _resampled_length(self, num_samples):
        """Samples at the semantic rate for `num_samples` (int or tensor): ceil, as the resampler cuts."""
        gcd = math.gcd(self.config.sample_rate, self.config.semantic_sample_rate)
        up, down = self.config.semantic_sample_rate // gcd, self.config.sample_rate // gcd
        return -(-num_samples * up // down)

    def _length_rule(self, length_rule: str | None) -> str:
        length_rule = self.config.length_rule if length_rule is None else length_rule
        if length_rule not in LENGTH_RULES:
            raise ValueError(f"length_rule must be one of {LENGTH_RULES}, got {length_rule!r}")
        return length_rule

    def _mask_lengths(self, input_values, padding_mask) -> torch.Tensor:
        """Each item's number of audio samples `[B]` (CPU, int64) from a right-padding mask."""
        batch, num_samples = input_values.shape[0], input_values.shape[-1]
        if not isinstance(padding_mask, (torch.Tensor, np.ndarray)) or tuple(padding_mask.shape) != (batch, num_samples):
            shape = tuple(padding_mask.shape) if hasattr(padding_mask, "shape") else type(padding_mask).__name__
            raise ValueError(f"padding_mask has shape {shape}, expected {(batch, num_samples)} (batch, samples)")
        mask = torch.as_tensor(padding_mask).to(torch.long).cpu()
        lengths = mask.sum(-1)
        expected = (torch.arange(num_samples) < lengths[:, None]).long()
        if not torch.equal(mask, expected):
            raise ValueError("padding_mask must be 1 for the audio then 0 for the padding (right padding only)")
        return lengths

    def _check_waveform(self, input_values) -> torch.Tensor:
        """A float waveform `[batch, 1, samples]` with finite samples, on the model's device and dtype."""
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(f"input_values must be a torch.Tensor [batch, 1, samples], got {type(input_values).__name__}")
        if input_values.dim() != 3:
            raise ValueError(
                f"input_values must have shape [batch, channels=1, samples], got {tuple(input_values.shape)}"
                + (" (add the batch and channel axes: x[None, None])" if input_values.dim() == 1 else "")
            )
        if input_values.shape[1] != 1:
            raise ValueError(f"Audio must be mono, but got {input_values.shape[1]} channels (average them first)")
        if not input_values.is_floating_point():
            raise TypeError(
                f"input_values must be floating point in [-1, 1], got {input_values.dtype}; "
                "scale integer PCM first (e.g. int16: x.float() / 32768)"
            )
        num_samples = input_values.shape[-1]
        if input_values.shape[0] == 0 or num_samples == 0:
            raise ValueError(f"input_values is empty: shape {tuple(input_values.shape)}")
        if not torch.isfinite(input_values).all():
            raise ValueError("input_values contains NaN or infinite samples")
        return input_values.to(device=self.device, dtype=self.dtype)

    def _check_lengths(self, input_values, padding_mask, length_rule: str | None) -> None:
        """Every item is long enough to encode, at its valid length when masked."""
        shortest = self.min_input_length(length_rule)
        if padding_mask is None:
            counts = [input_values.shape[-1]]
        else:
            counts = self.valid_length(self._mask_lengths(input_values, padding_mask), length_rule).tolist()
        for i, n in enumerate(counts):
            if n < shortest:
                item = f"item {i} of the batch has {n} samples" if padding_mask is not None else f"input of {n} samples"
                raise ValueError(
                    f"{item}: too short: the shortest this model encodes is "
                    f"{shortest} samples ({shortest / self.config.sample_rate * 1000:.1f} ms)"
                )

    def check_codes(self, audio_codes, to_device: bool = True) -> torch.Tensor:
        """`audio_codes` `[batch, n_q, frames]` as int64 on the model's device (where they are,
        with `to_device=False`), or a clear error: an integer tensor with 1 to
        `num_quantizers` rows and values in [0, codebook_size)."""
        if not isinstance(audio_codes, torch.Tensor):
            raise TypeError(f"audio_codes must be a torch.Tensor [batch, n_q, frames], got {type(audio_codes).__name__}")
        if audio_codes.dim() != 3:
            raise ValueError(f"audio_codes must have shape [batch, num_quantizers, frames], got {tuple(audio_codes.shape)}")
        if audio_codes.is_floating_point() or audio_codes.is_complex() or audio_codes.dtype == torch.bool:
            raise TypeError(f"audio_codes must be an integer tensor, got {audio_codes.dtype}")
        n_q, frames, most = audio_codes.shape[1], audio_codes.shape[2], self.num_quantizers
        if not 1 <= n_q <= most:
            raise ValueError(f"audio_codes has {n_q} quantizers; this model decodes 1 to {most}")
        if audio_codes.shape[0] == 0 or frames == 0:
            raise ValueError(f"audio_codes is empty: shape {tuple(audio_codes.shape)}")
        if audio_codes.dtype in _WIDE_UNSIGNED:  # PyTorch has no min/max for them
            audio_codes = audio_codes.to(torch.long)  # (uint64 past 2**63 turns negative: refused below)
        low, high = torch.aminmax(audio_codes)
        low, high = int(low), int(high)
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(
                f"audio_codes must lie in [0, {self.config.codebook_size}); found values from {low} to {high}"
            )
        return audio_codes.to(device=self.device if to_device else audio_codes.device, dtype=torch.long)

    def _wrap(self, output: ModelOutput, return_dict: bool | None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if return_dict:
            return output
        values = output.to_tuple()
        return values[0] if len(values) == 1 else values


def _resolve_device(device) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, dict):
        raise ValueError("device_map as a dict is not supported: the whole model goes on one device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def convert_original_to_transformers(source: str | os.PathLike, destination: str | os.PathLike, **options) -> None:
    """Read an original-format checkpoint (directory or Hub id) and write it in the transformers format."""
    HiggsAudioV2TokenizerModel.from_pretrained(source, **options).save_pretrained(destination)
