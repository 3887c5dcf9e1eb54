"""`from_preset` / `from_folder` / `from_dict` for the model config dataclasses.

Every model config (`UNetConfig`, `VAEConfig`, `ClipTextConfig`, `ImageBindConfig`,
`CIMConfig`) mixes in `PresetConfig` and names:

  - `_presets`: preset name -> the fields it sets (a dict, or a classmethod name returning the
    config), e.g. UNetConfig 'vc2', 'sd21', 'tiny';
  - `_folder_key`: where its fields sit in the `config.json` of a params folder written by
    `maestro_jax.checkpoints.save_params` (converters and trainer exports): under that key
    (`{"unet": {...}}`), or at the top level when None (the text tower's folders), with
    `_folder_fallback` keys tried next (older folders used `"config"`).

`Config.from_folder(path, **overrides)` reads `path/config.json`; JSON lists become tuples and a
stored dtype name is kept unless overridden; unknown keys (provenance, `model`, `source`...) are
ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np


class PresetConfig:
    """Mixin for frozen config dataclasses (see the module docstring)."""

    _presets: ClassVar[dict[str, dict[str, Any]]] = {}
    _folder_key: ClassVar[str | None] = None
    _folder_fallback: ClassVar[tuple[str, ...]] = ()
    _dtype_object: ClassVar[bool] = False  # dtype field holds a numpy dtype (stored as its name)

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(cls._presets)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any):
        """The named preset with `overrides` applied; ValueError naming the known presets."""
        if name not in cls._presets:
            raise ValueError(
                f"unknown {cls.__name__} preset {name!r} (known: {', '.join(cls._presets)})"
            )
        return cls(**{**cls._presets[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any):
        """From a dict of fields (e.g. a config.json section): unknown keys ignored, lists made
        tuples, then `overrides`."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        if cls._dtype_object and isinstance(kw.get("dtype"), str):
            kw["dtype"] = np.dtype(kw["dtype"]) if kw["dtype"] != "bfloat16" else jnp.bfloat16
        return cls(**{**kw, **overrides})

    @classmethod
    def folder_fields(cls, path: str | os.PathLike) -> dict[str, Any]:
        """The fields stored in `path/config.json` (ValueError naming the file otherwise)."""
        f = Path(path) / "config.json"
        if not f.is_file():
            raise ValueError(f"{path} has no config.json (not a params folder?)")
        try:
            meta = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from e
        if cls._folder_key is None:
            return meta
        for key in (cls._folder_key, *cls._folder_fallback):
            if isinstance(meta.get(key), dict):
                return meta[key]
        raise ValueError(f"{f} holds no {cls._folder_key!r} section ({cls.__name__})")

    @classmethod
    def from_folder(cls, path: str | os.PathLike, **overrides: Any):
        """The config stored with a params folder (`checkpoints.save_params` layout)."""
        return cls.from_dict(cls.folder_fields(path), **overrides)
