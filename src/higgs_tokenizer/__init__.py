"""Higgs Audio V2 tokenizer: 24 kHz audio ⇄ 8 streams of codes at 25 frames per second."""

from .version import __version__  # noqa: F401  (the package's version attribute)

# Every public name loads on first use (PEP 562), so that importing the package, or one
# of its torch-free parts, does not import torch: a corpus job's decoding workers import
# `higgs_tokenizer.dataset` and would otherwise each spend a second or more on torch.
_LAZY = {
    "AcousticConfig": "config",
    "BatchFeature": "feature_extraction",
    "CheckpointError": "checkpoint_files",
    "EncodedAudio": "codes_file",
    "HiggsAudioTokenizer": "tokenizer",
    "HiggsAudioV2TokenizerConfig": "config",
    "HiggsAudioV2TokenizerDecoderOutput": "model",
    "HiggsAudioV2TokenizerEncoderOutput": "model",
    "HiggsAudioV2TokenizerFeatureExtractor": "feature_extraction",
    "HiggsAudioV2TokenizerModel": "model",
    "HiggsAudioV2TokenizerOutput": "model",
    "HubertConfig": "config",
    "convert_original_to_transformers": "model",
    "load_codes": "codes_file",
    "resample": "resampling",
    "save_original": "checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
