"""Higgs Audio V2 tokenizer: 24 kHz audio ⇄ 8 streams of codes at 25 frames per second."""

from .checkpoint import CheckpointError, convert_original_to_transformers, save_original
from .config import AcousticConfig, HiggsAudioV2TokenizerConfig, HubertConfig
from .feature_extraction import BatchFeature, HiggsAudioV2TokenizerFeatureExtractor
from .model import (
    HiggsAudioV2TokenizerDecoderOutput,
    HiggsAudioV2TokenizerEncoderOutput,
    HiggsAudioV2TokenizerModel,
    HiggsAudioV2TokenizerOutput,
)
from .resample import resample

__version__ = "0.1.0"

__all__ = [
    "AcousticConfig",
    "BatchFeature",
    "CheckpointError",
    "HiggsAudioV2TokenizerConfig",
    "HiggsAudioV2TokenizerDecoderOutput",
    "HiggsAudioV2TokenizerEncoderOutput",
    "HiggsAudioV2TokenizerFeatureExtractor",
    "HiggsAudioV2TokenizerModel",
    "HiggsAudioV2TokenizerOutput",
    "HubertConfig",
    "convert_original_to_transformers",
    "resample",
    "save_original",
]
