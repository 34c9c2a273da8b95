"""sentence-transformers plug-in: a ``SentenceTransformer`` whose ``encode`` is :meth:`bellm.Encoder.encode`.

``to_sentence_transformer(encoder_or_path)`` returns
``SentenceTransformer(modules=[BellmEncoderModule(encoder)])``. The single module takes the raw texts (its
``preprocess`` does no tokenization) and its ``forward`` runs the Encoder's packed path on each of
sentence-transformers' batches, so the embeddings equal ``Encoder.encode`` (batching never changes them). MTEB
and anything else that takes a ``SentenceTransformer`` can use it as is. For speed pass a large ``batch_size``
to ``encode`` (the Encoder packs each batch under its token budget; 32, sentence-transformers' default, gives
small packed batches).

Saving: ``model.save(path)`` writes the Encoder (model safetensors, tokenizer, ``bellm_encoder.json``) and
``modules.json`` naming ``bellm.st_plugin.BellmEncoderModule``, as a whole new folder: the model
``to_sentence_transformer`` returns saves into a temporary folder renamed on success, so a failed save leaves
nothing half-written, and refuses an existing non-empty ``path`` (FileExistsError). A model loaded from a GGUF
file saves its de-quantised float weights. Load it back with ``to_sentence_transformer(path)`` (no
``trust_remote_code`` needed: bellm builds the model itself). Plain ``SentenceTransformer(path)`` also works with
bellm installed, but sentence-transformers >= 6 asks for ``trust_remote_code=True`` for any module class outside
its own package, even an installed one (here it imports the installed ``bellm.st_plugin``; no code is read from
the folder).

sentence-transformers' ``prompt=`` (a prefix string) is prepended to the text inside the Encoder's ``{text}``
template; ``normalize_embeddings`` is applied by sentence-transformers after pooling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import InputModule

from bellm._io import atomic_dir
from bellm.encoder import ENCODER_CONFIG, Encoder

__all__ = ["BellmEncoderModule", "BellmSentenceTransformer", "to_sentence_transformer"]


class BellmEncoderModule(InputModule):
    """The whole bellm Encoder as one sentence-transformers input module: texts in, ``sentence_embedding``
    out."""

    save_in_root = True
    config_keys: list[str] = []

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.auto_model = encoder.model  # a registered submodule: .to(device), .device and .eval() reach it
        self.tokenizer = encoder.tokenizer

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        texts = list(inputs)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"input {i} is {type(t).__name__}, not str; bellm encodes text only")
        if prompt:
            texts = [prompt + t for t in texts]
        return {"texts": texts}

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        # sentence-transformers runs this under torch.inference_mode(); the Encoder enters it itself around
        # the model
        # and needs its packed-batch tensors created outside it (the kernels cache checks by tensor version).
        with torch.inference_mode(False):
            emb, _ = self.encoder._encode(features["texts"])
        features["sentence_embedding"] = emb
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.encoder.dim

    def get_embedding_dimension(self) -> int:
        return self.encoder.dim

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        # sentence-transformers has already written its own files into output_path: write beside them
        self.encoder.write_files(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> BellmEncoderModule:
        path = Path(model_name_or_path) / subfolder
        device = (kwargs.get("model_kwargs") or {}).get("device")
        return cls(Encoder.from_pretrained(path, device=device))


class BellmSentenceTransformer(SentenceTransformer):
    """The ``SentenceTransformer`` :func:`to_sentence_transformer` returns: its ``save`` writes a whole new
    folder (a temporary folder renamed on success; FileExistsError for a non-empty ``path``, before anything
    is written)."""

    def save(self, path, *args, **kwargs) -> None:
        if path is None:
            return
        with atomic_dir(path) as tmp:
            super().save(str(tmp), *args, **kwargs)


def to_sentence_transformer(
    encoder_or_path: Encoder | str | os.PathLike | None = None, *, device=None, **from_pretrained_kwargs
):
    """A ``SentenceTransformer`` wrapping a bellm :class:`~bellm.Encoder`.

    ``encoder_or_path``: an Encoder (wrapped as is, shared, not copied); or a directory saved by
    ``SentenceTransformer.save`` / :meth:`Encoder.save_pretrained` (settings restored); or anything
    :meth:`Encoder.from_pretrained` takes, with ``from_pretrained_kwargs`` (``None`` = the real SmolLM2).
    """
    if isinstance(encoder_or_path, Encoder):
        if from_pretrained_kwargs:
            raise TypeError(
                f"an Encoder was given; unexpected arguments {', '.join(sorted(from_pretrained_kwargs))}"
            )
        encoder = encoder_or_path
    else:
        if encoder_or_path is not None and not Path(encoder_or_path).exists():
            raise FileNotFoundError(
                f"{str(encoder_or_path)!r} does not exist; pass an Encoder or a local directory"
            )
        if (
            encoder_or_path is not None
            and not (Path(encoder_or_path) / ENCODER_CONFIG).is_file()
            and (Path(encoder_or_path) / "modules.json").is_file()
        ):
            raise ValueError(
                f"{str(encoder_or_path)!r} is a sentence-transformers model not saved by bellm (no "
                f"{ENCODER_CONFIG}); load it with SentenceTransformer directly"
            )
        encoder = Encoder.from_pretrained(encoder_or_path, device=device, **from_pretrained_kwargs)
    return BellmSentenceTransformer(modules=[BellmEncoderModule(encoder)], device=str(device or encoder.device))
