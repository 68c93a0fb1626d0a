"""Higgs Audio V2 tokenizer: 24 kHz audio ⇄ 8 streams of codes at 25 frames per second."""

from .checkpoint import save_original
from .checkpoint_files import CheckpointError
from .config import AcousticConfig, HiggsAudioV2TokenizerConfig, HubertConfig
from .feature_extraction import BatchFeature, HiggsAudioV2TokenizerFeatureExtractor
from .model import (
    HiggsAudioV2TokenizerDecoderOutput,
    HiggsAudioV2TokenizerEncoderOutput,
    HiggsAudioV2TokenizerModel,
    HiggsAudioV2TokenizerOutput,
    convert_original_to_transformers,
)
from .resample import resample
from .version import __version__  # noqa: F401  (the package's version attribute)


# The file-level API loads on first use, so `import higgs_tokenizer` stays light.
_LAZY = {"HiggsAudioTokenizer": "tokenizer", "load_codes": "codes_file", "EncodedAudio": "codes_file"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AcousticConfig",
    "BatchFeature",
    "EncodedAudio",
    "CheckpointError",
    "HiggsAudioTokenizer",
    "HiggsAudioV2TokenizerConfig",
    "HiggsAudioV2TokenizerDecoderOutput",
    "HiggsAudioV2TokenizerEncoderOutput",
    "HiggsAudioV2TokenizerFeatureExtractor",
    "HiggsAudioV2TokenizerModel",
    "HiggsAudioV2TokenizerOutput",
    "HubertConfig",
    "convert_original_to_transformers",
    "load_codes",
    "resample",
    "save_original",
]
