"""``pgml.load_dataset``: find a dataset, map its features to PostgreSQL columns and
stream its rows as ``COPY ... FROM STDIN`` text.

Places, in order (the error names every one that was looked in when none has it):

1. The datasets folder (``--datasets-dir``): ``<dir>/<source>/`` or ``<dir>/<source>.<ext>``
   for ``ext`` in jsonl, json, csv, tsv, parquet.  A folder is either a ``save_to_disk``
   Dataset/DatasetDict or anything ``datasets.load_dataset(folder)`` understands (data files,
   one per split such as ``train.jsonl`` and ``test.parquet``, or a hub repository snapshot).
   A mirror holds data already built, so builder kwargs (kde4's ``lang1``/``lang2``) are not
   passed on; they only pick a configuration subfolder when one exists: ``<folder>/<subset>/``,
   else ``<folder>/<kwarg values joined by "-">/`` (``lang1=en, lang2=es`` -> ``kde4/en-es/``,
   the hub's name for that configuration), else the folder itself.  A ``subset`` with no
   subfolder is passed to ``datasets.load_dataset`` as the configuration name.
2. A local file (CSV, TSV, JSON, JSON Lines, Parquet, optionally compressed) or folder (as
   above, without configuration subfolders) named by a path: absolute, ``~``, or ``./`` and
   ``../`` relative to the datasets folder.  Kwargs other than ``split`` go to
   ``datasets.load_dataset``; a ``save_to_disk`` folder ignores them.
3. The Hugging Face hub: ``datasets.load_dataset(source, subset, streaming=True, **kwargs)``,
   as a hub id only (``hf://datasets/``), so that the library never reads a folder of the
   proxy's working directory by that name.

A name or relative path is never looked up in the proxy's working directory: relative paths
(of the source and of kwargs) are relative to the dataset's own folder or to the datasets
folder, and without one of them they are refused (22023).

Every file is read only as the caller's :class:`~handlers.files.FileRights` allow: the
datasets folder's own files (links followed must stay inside), else the privilege of
``pg_read_server_files``; so are the paths that kwargs name (``data_files``, ``data_dir``,
``cache_dir``), which go on as the real paths checked.

Without a ``split`` kwarg every split but ``unsupervised`` is loaded, train first, then
validation, then test, then the others in the dataset's order; ``limit`` caps the total.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.errors import PgmlError, invalid_argument, unsupported
from handlers.files import FileRights, NeedsRight, is_path, local_value, named

log = logging.getLogger("pgml_proxy.datasets")

FILE_BUILDERS: dict[str, str] = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
"""Data file suffixes and the ``datasets`` packaged builder that reads them."""

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
MIRROR_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
"""Suffixes tried for ``<datasets_dir>/<source><suffix>``, in this order."""

SPLIT_ORDER = {"train": 0, "validation": 1, "valid": 1, "dev": 1, "test": 2}
SKIPPED_SPLITS = frozenset({"unsupervised"})
RESERVED_KWARGS = frozenset({"streaming", "path", "name", "download_config", "storage_options"})
PATH_KWARGS = ("data_files", "data_dir", "cache_dir")
"""Kwargs of ``datasets.load_dataset`` that name files or folders."""

JSON_CHUNK_BYTES = 1 << 20
"""Bytes the json builder reads at a time (its own default is 10 MiB); rows may be longer."""

DEFAULT_CHUNK_BYTES = 4 << 20
"""A chunk from ``DatasetPlan.rows`` is flushed once it holds this many bytes."""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
NULL = "\\N"

Encoder = Callable[[Any], str]


@dataclass(frozen=True)
class _Split:
    name: str
    dataset: Any  # datasets.Dataset or datasets.IterableDataset
    num_rows: int | None


@dataclass(frozen=True)
class DatasetPlan:
    """Where a dataset goes (``pgml."<table_name>"``), its columns, and its rows as COPY text."""

    table_name: str
    columns: list[tuple[str, str]]
    row_count_hint: int | None
    source: str = ""
    limit: int | None = None
    splits: tuple[_Split, ...] = field(default=(), repr=False)

    def rows(
        self, batch_rows: int = 10_000, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[bytes]:
        """COPY text-format chunks of whole rows, each ending with a newline.

        A chunk holds up to ``batch_rows`` rows, or fewer once it reaches ``chunk_bytes``.
        """
        if batch_rows <= 0:
            raise ValueError("batch_rows must be positive")
        names = [name for name, _ in self.columns]
        encoders = [_ENCODERS[pg_type] for _, pg_type in self.columns]
        remaining = self.limit
        lines: list[str] = []
        size = 0
        for split in self.splits:
            if remaining is not None and remaining <= 0:
                break
            for batch in _batches(self.source, split, min(batch_rows, remaining or batch_rows)):
                columns = [batch[name] for name in names]
                count = len(columns[0]) if columns else 0
                if remaining is not None:
                    count = min(count, remaining)
                    remaining -= count
                for index in range(count):
                    line = "\t".join(
                        NULL if column[index] is None else encode(column[index])
                        for encode, column in zip(encoders, columns, strict=True)
                    )
                    lines.append(line)
                    size += len(line)
                    if len(lines) >= batch_rows or size >= chunk_bytes:
                        yield _chunk(lines)
                        lines, size = [], 0
                if remaining is not None and remaining <= 0:
                    break
        if lines:
            yield _chunk(lines)

    @property
    def csv_ready(self) -> bool:
        """Whether :meth:`csv_rows` can write every column (flat text, numbers, booleans)."""
        return all(kind in _CSV_CASTS for _, kind in self.columns)

    def csv_rows(self, batch_rows: int = 10_000) -> Iterator[bytes]:
        """The rows as ``COPY ... (FORMAT csv)`` chunks, written by Arrow's C++ CSV writer
        from the dataset's Arrow batches: no Python object per value."""
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        names = [name for name, _ in self.columns]
        casts = [_CSV_CASTS[kind] for _, kind in self.columns]
        options = pa_csv.WriteOptions(include_header=False)
        remaining = self.limit
        for split in self.splits:
            if remaining is not None and remaining <= 0:
                break
            for table in _arrow_batches(self.source, split, batch_rows):
                if remaining is not None:
                    table = table.slice(0, remaining)
                    remaining -= table.num_rows
                columns = [
                    table.column(name).cast(cast) if cast else table.column(name)
                    for name, cast in zip(names, casts, strict=True)
                ]
                sink = pa.BufferOutputStream()
                pa_csv.write_csv(pa.table(columns, names=names), sink, options)
                yield sink.getvalue().to_pybytes()
                if remaining is not None and remaining <= 0:
                    break


def plan_dataset(
    source: str,
    subset: str | None,
    limit: int | None,
    kwargs: Mapping[str, Any] | str | None,
    datasets_dir: Path | None,
    rights: FileRights,
) -> DatasetPlan:
    """Resolve ``source`` and describe how to load it; no rows are read beyond a peek, and
    no file before ``rights`` allow it.  Errors name the datasets folder by its flag, not
    by its path on the server."""
    try:
        return _plan(source, subset, limit, kwargs, datasets_dir, rights)
    except PgmlError as error:
        if datasets_dir is not None and not isinstance(error, NeedsRight):
            folders = {datasets_dir.expanduser().absolute(): "<--datasets-dir>"}
            folders[Path(os.path.realpath(datasets_dir.expanduser()))] = "<--datasets-dir>"
            error.message = named(error.message, folders)
            error.detail = error.detail and named(error.detail, folders)
        raise


def _plan(
    source: str,
    subset: str | None,
    limit: int | None,
    kwargs: Mapping[str, Any] | str | None,
    datasets_dir: Path | None,
    rights: FileRights,
) -> DatasetPlan:
    if not isinstance(source, str) or not source.strip():
        raise invalid_argument("load_dataset needs a dataset name or path")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise invalid_argument(f'"limit" must be an integer, not {limit!r}')
    if limit is not None and limit < 0:
        raise invalid_argument(f'"limit" must not be negative (got {limit})')
    if subset is not None and not isinstance(subset, str):
        raise invalid_argument(f"subset must be text, not {subset!r}")
    options = _parse_kwargs(kwargs)
    split = options.pop("split", None)
    if split is not None and (not isinstance(split, str) or not split):
        raise invalid_argument(f'kwargs "split" must be a split name, not {split!r}')

    places: list[str] = []
    loaded = _from_datasets_dir(source, subset, options, datasets_dir, places, rights)
    if loaded is None:
        loaded = _from_local_path(source, subset, options, datasets_dir, places, rights)
    if loaded is None:
        builder = _is_builder(source)  # its data files are the server's
        local = _local_kwargs(options, datasets_dir if builder else None, rights, not builder)
        loaded = _from_hub(source, subset, local, places, builder)
    if loaded is None:
        raise PgmlError(
            "42704",
            f'dataset "{source}" was not found',
            detail="Looked in: " + "; ".join(places) + ".",
            hint="Put it in the datasets folder (--datasets-dir) to load it offline.",
        )
    table_name, found = loaded
    splits = _select_splits(source, found, split)
    features = _resolve_features(source, splits[0])
    columns = _columns(features)
    aligned = tuple(_align(source, s, features) for s in splits)
    counts = [s.num_rows for s in aligned]
    hint = None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
    if limit is not None:
        hint = limit if hint is None else min(hint, limit)
    log.debug("dataset %s -> table %s, columns %s", source, table_name, columns)
    return DatasetPlan(table_name, columns, hint, source, limit, aligned)


# --- kwargs -------------------------------------------------------------------------------


def _parse_kwargs(kwargs: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        text = kwargs.strip() or "{}"
        try:
            kwargs = json.loads(text)
        except json.JSONDecodeError as exc:
            raise invalid_argument(f"kwargs is not valid JSON: {exc}") from None
    if not isinstance(kwargs, Mapping):
        raise invalid_argument(f"kwargs must be a JSON object, not {type(kwargs).__name__}")
    options = dict(kwargs)
    for key in options:
        if not isinstance(key, str) or not key:
            raise invalid_argument(f"kwargs keys must be non-empty text, not {key!r}")
    reserved = sorted(RESERVED_KWARGS & options.keys())
    if reserved:
        raise invalid_argument(
            f"kwargs may not set {', '.join(reserved)}",
            hint="The dataset name and subset are arguments of load_dataset.",
        )
    for key in PATH_KWARGS:
        for value in _path_values(options.get(key)):
            local_value(value, f'kwargs "{key}"')
    return options


def _path_values(value: Any) -> list[str]:
    """The paths or URLs of a ``data_files``-like value (text, a list, or a dict by split)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        return [v for inner in value.values() for v in _path_values(inner)]
    raise invalid_argument(
        f"kwargs paths must be text, a list of texts or an object of them, not {value!r}"
    )


def _local_kwargs(
    options: dict[str, Any], base: Path | None, rights: FileRights, hub: bool = False
) -> dict[str, Any]:
    """``options`` with each local path a kwarg names checked and replaced by its real
    path.  Relative paths are relative to ``base`` (a local dataset's folder, or the
    datasets folder for a builder such as ``csv``); for a ``hub`` dataset relative
    ``data_files`` and ``data_dir`` name files of its repository.  Any other relative path
    is refused: it would be the proxy's working directory's."""

    def checked(key: str, value: Any) -> Any:
        if isinstance(value, list):
            return [checked(key, v) for v in value]
        if isinstance(value, dict):
            return {split: checked(key, v) for split, v in value.items()}
        if not local_value(value, f'kwargs "{key}"'):
            return value
        if os.path.isabs(os.path.expanduser(value)):
            return rights.require(Path(value), value)
        if hub and key != "cache_dir":
            return value
        return rights.require(_relative(value, base, f'kwargs "{key}"'), value)

    return {
        key: checked(key, value) if key in PATH_KWARGS else value for key, value in options.items()
    }


# --- places ---------------------------------------------------------------------------------


def _from_datasets_dir(
    source: str,
    subset: str | None,
    options: dict[str, Any],
    datasets_dir: Path | None,
    places: list[str],
    rights: FileRights,
) -> tuple[str, Any] | None:
    if datasets_dir is None:
        places.append("datasets folder (not configured: --datasets-dir)")
        return None
    root = datasets_dir.expanduser().absolute()
    folder = Path(os.path.normpath(root / source))
    if not folder.is_relative_to(root) or folder == root:
        places.append("datasets folder (not a name inside it)")
        return None
    if folder.is_dir():
        chosen, name = _config_folder(folder, subset, options)
        return source, _open_folder(source, Path(rights.require(chosen, source)), name, {})
    for suffix in MIRROR_SUFFIXES:
        candidate = folder.with_name(folder.name + suffix)
        if candidate.is_file():
            return source, _open_file(source, Path(rights.require(candidate, source)), {})
    tried = ", ".join(f"{source}{suffix}" for suffix in MIRROR_SUFFIXES)
    places.append(f"datasets folder ({source}/, {tried})")
    return None


def _config_folder(
    folder: Path, subset: str | None, options: dict[str, Any]
) -> tuple[Path, str | None]:
    """The configuration subfolder to read, and the subset left for ``load_dataset``."""
    if subset:
        candidate = folder / subset
        if candidate.is_dir() and candidate.parent == folder:
            return candidate, None
        return folder, subset
    values = [v for v in options.values() if isinstance(v, str | int) and not isinstance(v, bool)]
    if values and len(values) == len(options):
        candidate = folder / "-".join(str(v) for v in values)
        if candidate.is_dir() and candidate.parent == folder:
            return candidate, None
    return folder, None


def _from_local_path(
    source: str,
    subset: str | None,
    options: dict[str, Any],
    datasets_dir: Path | None,
    places: list[str],
    rights: FileRights,
) -> tuple[str, Any] | None:
    """A path (a name is not one), checked against the caller's rights before anything
    else is known of it; a relative one is relative to the datasets folder."""
    if not is_path(source):
        return None
    given = os.path.expanduser(source)
    named_path = Path(given) if os.path.isabs(given) else _relative(source, datasets_dir, "path")
    path = Path(rights.require(named_path, source))
    if path.is_dir():
        return _stem(path), _open_folder(source, path, subset, _local_kwargs(options, path, rights))
    if path.is_file():
        local = _local_kwargs(options, path.parent, rights)
        return _stem(Path(given)), _open_file(source, path, local)
    places.append(f"local path {source} (no such file or folder)")
    return None


def _relative(value: str, base: Path | None, what: str) -> Path:
    """The relative path ``value`` inside ``base``; 22023 without one (never the proxy's
    working directory)."""
    if base is None:
        raise invalid_argument(
            f'{what} "{value}" is relative, and there is no folder it could be relative to',
            hint="Give an absolute path, or a path relative to the datasets folder "
            "(--datasets-dir).",
        )
    return base.expanduser().absolute() / value


def _from_hub(
    source: str, subset: str | None, options: dict[str, Any], places: list[str], builder: bool
) -> tuple[str, Any] | None:
    from huggingface_hub.errors import HFValidationError

    datasets = _hf()
    unreachable = None if datasets.config.HF_HUB_OFFLINE else _hub_unreachable()
    if datasets.config.HF_HUB_OFFLINE or unreachable:
        places.append(f"Hugging Face hub ({unreachable or 'offline'})")
        return None
    try:
        hub_id = source if builder else "hf://datasets/" + source  # never a local folder
        found = datasets.load_dataset(hub_id, subset, streaming=True, **options)
    except (ConnectionError, FileNotFoundError, HFValidationError) as exc:
        offline = "Offline" in str(exc) or datasets.config.HF_HUB_OFFLINE
        reason = "offline" if offline else _first_line(exc)
        places.append(f"Hugging Face hub ({reason})")
        return None
    except (TypeError, ValueError) as exc:
        raise invalid_argument(
            f'dataset "{source}" cannot be loaded with these arguments: {_first_line(exc)}'
        ) from None
    except (RuntimeError, datasets.exceptions.DatasetsError) as exc:
        raise unsupported(f'dataset "{source}" cannot be loaded: {_first_line(exc)}') from None
    return source, found


def _is_builder(source: str) -> bool:
    """Whether ``source`` names one of the ``datasets`` library's packaged builders (``csv``,
    ``json``, ...), which read the files ``data_files`` names relative to the working
    directory."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return source in _PACKAGED_DATASETS_MODULES


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, found in one quick connection attempt rather than
    the hub client's retries (which take half a minute on a machine with no route)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"unreachable: {exc.strerror or exc}"


# --- opening --------------------------------------------------------------------------------


def _open_folder(source: str, folder: Path, subset: str | None, options: dict[str, Any]) -> Any:
    datasets = _hf()

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        if subset:
            raise invalid_argument(
                f'dataset "{source}" is a saved dataset with no subset "{subset}"',
                detail=f"No folder {folder / subset}.",
            )
        try:
            return datasets.load_from_disk(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise invalid_argument(
                f'dataset "{source}" is not a readable saved dataset: {_first_line(exc)}'
            ) from None
    if "chunksize" not in options and _only_json_files(folder):
        options = {"chunksize": JSON_CHUNK_BYTES, **options}
    named = _files_named_by_split(folder)
    if named is not None and "data_files" not in options:
        builder, files = named
        return _load(source, builder, subset, {"data_files": files, **options})
    return _load(source, str(folder), subset, options)


def _files_named_by_split(folder: Path) -> tuple[str, dict[str, str]] | None:
    """``<split>.<ext>`` files of one format directly in ``folder`` (``train.jsonl``,
    ``ca_test.jsonl``): each file is the split its name says, whatever the name."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in FILE_BUILDERS and not p.name.startswith(".")
    )
    builders = {FILE_BUILDERS[p.suffix.lower()] for p in files}
    if not files or len(builders) != 1 or any(p.is_dir() for p in folder.iterdir()):
        return None
    return builders.pop(), {p.stem: str(p) for p in files}


def _open_file(source: str, path: Path, options: dict[str, Any]) -> Any:
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    builder = FILE_BUILDERS.get(Path(name).suffix)
    if builder is None:
        known = ", ".join(sorted(FILE_BUILDERS))
        raise unsupported(f'dataset file "{path}" has an unknown type (known: {known})')
    if Path(name).suffix == ".tsv":
        options = {"sep": "\t", **options}
    if builder == "json" and "chunksize" not in options:
        options = {"chunksize": JSON_CHUNK_BYTES, **options}
    return _load(source, builder, None, {"data_files": str(path), **options})


def _only_json_files(folder: Path) -> bool:
    """Whether every data file under ``folder`` is JSON (so the json builder will read it)."""
    seen = False
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() == ".md":
            continue
        name = path.name.lower()
        for suffix in COMPRESSION_SUFFIXES:
            name = name.removesuffix(suffix)
        if FILE_BUILDERS.get(Path(name).suffix) != "json":
            return False
        seen = True
    return seen


def _load(source: str, path: str, subset: str | None, options: dict[str, Any]) -> Any:
    datasets = _hf()

    try:
        return datasets.load_dataset(path, subset, streaming=True, **options)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(
            f'dataset "{source}" cannot be loaded with these arguments: {_first_line(exc)}'
        ) from None
    except FileNotFoundError as exc:
        raise invalid_argument(
            f'dataset "{source}" has no data files: {_first_line(exc)}'
        ) from None
    except (RuntimeError, datasets.exceptions.DatasetsError) as exc:
        raise unsupported(f'dataset "{source}" cannot be loaded: {_first_line(exc)}') from None


# --- splits ---------------------------------------------------------------------------------


def _select_splits(source: str, found: Any, wanted: str | None) -> list[_Split]:
    datasets = _hf()

    if isinstance(found, datasets.Dataset | datasets.IterableDataset):
        name = str(found.split) if found.split is not None else "train"
        available = {name: found}
    else:
        available = dict(found.items())
    if not available:
        raise invalid_argument(f'dataset "{source}" has no splits')
    if wanted is not None:
        if wanted not in available:
            raise invalid_argument(
                f'dataset "{source}" has no split "{wanted}"',
                detail="Available splits: " + ", ".join(available) + ".",
            )
        names = [wanted]
    else:
        names = [n for n in available if n not in SKIPPED_SPLITS] or list(available)
        position = {n: i for i, n in enumerate(names)}
        names.sort(key=lambda n: (SPLIT_ORDER.get(n, 3), position[n]))
    return [_Split(n, available[n], _num_rows(available[n], n)) for n in names]


def _num_rows(dataset: Any, name: str) -> int | None:
    datasets = _hf()

    if isinstance(dataset, datasets.Dataset):
        return int(dataset.num_rows)
    splits = getattr(dataset.info, "splits", None)
    if splits and name in splits and splits[name].num_examples:
        return int(splits[name].num_examples)
    return None


def _resolve_features(source: str, split: _Split) -> Any:
    datasets = _hf()

    if split.dataset.features is not None:
        return split.dataset.features
    try:
        table = next(iter(split.dataset.with_format("arrow").iter(batch_size=1000)), None)
    except Exception as exc:
        raise _read_error(source, exc) from exc
    if table is None:
        return datasets.Features()
    return datasets.Features.from_arrow_schema(table.schema)


def _align(source: str, split: _Split, features: Any) -> _Split:
    own = split.dataset.features
    if own is None or own == features:
        return split
    if list(own) != list(features):
        raise invalid_argument(
            f'the splits of dataset "{source}" have different columns',
            detail=f'Split "{split.name}" has {", ".join(own)}; expected {", ".join(features)}.',
            hint='Load one split with kwargs => \'{"split": "..."}\'.',
        )
    try:
        return _Split(split.name, split.dataset.cast(features), split.num_rows)
    except Exception as exc:
        raise invalid_argument(
            f'split "{split.name}" of dataset "{source}" has other column types: {_first_line(exc)}'
        ) from None


def _arrow_batches(source: str, split: _Split, size: int) -> Iterator[Any]:
    try:
        yield from split.dataset.with_format("arrow").iter(batch_size=size)
    except PgmlError:
        raise
    except Exception as exc:
        raise _read_error(source, exc) from exc


def _batches(source: str, split: _Split, size: int) -> Iterator[Mapping[str, list[Any]]]:
    iterator: Iterable[Mapping[str, list[Any]]] = split.dataset.iter(batch_size=size)
    try:
        yield from iterator
    except PgmlError:
        raise
    except Exception as exc:
        raise _read_error(source, exc) from exc


def _read_error(source: str, exc: BaseException) -> PgmlError:
    return PgmlError("22000", f'reading dataset "{source}" failed: {_first_line(exc)}')


# --- types ----------------------------------------------------------------------------------

_VALUE_TYPES: dict[str, str] = {
    "bool": "BOOLEAN",
    "int8": "SMALLINT",
    "int16": "SMALLINT",
    "uint8": "SMALLINT",
    "int32": "INTEGER",
    "uint16": "INTEGER",
    "int64": "BIGINT",
    "uint32": "BIGINT",
    "uint64": "NUMERIC",
    "float16": "REAL",
    "float32": "REAL",
    "float": "REAL",
    "float64": "DOUBLE PRECISION",
    "double": "DOUBLE PRECISION",
    "string": "TEXT",
    "large_string": "TEXT",
    "string_view": "TEXT",
    "null": "TEXT",
    "binary": "BYTEA",
    "large_binary": "BYTEA",
    "binary_view": "BYTEA",
    "date32": "DATE",
    "date64": "DATE",
}


def _columns(features: Any) -> list[tuple[str, str]]:
    return [(name, _pg_type(name, feature)) for name, feature in features.items()]


def _pg_type(column: str, feature: Any) -> str:
    datasets = _hf()

    if isinstance(feature, datasets.ClassLabel):
        return "BIGINT"
    if isinstance(feature, datasets.Value):
        dtype = str(feature.dtype)
        if dtype in _VALUE_TYPES:
            return _VALUE_TYPES[dtype]
        if dtype.startswith("timestamp["):
            return "TIMESTAMPTZ" if "tz=" in dtype else "TIMESTAMP"
        if dtype.startswith(("time32", "time64")):
            return "TIME"
        if dtype.startswith("duration"):
            return "INTERVAL"
        if dtype.startswith("decimal"):
            return "NUMERIC"
        raise _unmappable(column, f"{dtype} values")
    _check_nested(column, feature)
    return "JSONB"


def _check_nested(column: str, feature: Any) -> None:
    """Refuse a feature that cannot become JSON (media, or anything unknown) at any depth."""
    datasets = _hf()

    if isinstance(feature, dict):
        for inner in feature.values():
            _check_nested(column, inner)
    elif isinstance(feature, list):
        for inner in feature:
            _check_nested(column, inner)
    elif isinstance(feature, datasets.List | datasets.LargeList | datasets.Sequence):
        _check_nested(column, feature.feature)
    elif isinstance(feature, datasets.Value):
        dtype = str(feature.dtype)
        if "binary" in dtype:
            raise _unmappable(column, f"nested {dtype} values")
    elif not isinstance(
        feature,
        getattr(datasets, "Json", datasets.Translation)
        | datasets.ClassLabel
        | datasets.Translation
        | datasets.TranslationVariableLanguages
        | datasets.Array2D
        | datasets.Array3D
        | datasets.Array4D
        | datasets.Array5D,
    ):
        raise _unmappable(column, f"{type(feature).__name__} features")


def _unmappable(column: str, what: str) -> PgmlError:
    return unsupported(
        f'column "{column}" cannot be loaded: {what} have no PostgreSQL type',
        hint="Drop the column from the dataset or load a split without it.",
    )


# --- COPY text encoding -----------------------------------------------------------------------


def copy_text(value: str) -> str:
    """Escape text for COPY's text format."""
    return value.translate(_COPY_ESCAPES)


def _encode_text(value: Any) -> str:
    return (value if isinstance(value, str) else str(value)).translate(_COPY_ESCAPES)


def _encode_int(value: Any) -> str:
    return str(int(value))


def _encode_float(value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _encode_bool(value: Any) -> str:
    return "t" if value else "f"


def _encode_bytes(value: Any) -> str:
    return "\\\\x" + bytes(value).hex()


def _encode_temporal(value: Any) -> str:
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return _encode_text(value)


def _encode_interval(value: Any) -> str:
    if isinstance(value, dt.timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    return _encode_text(value)


def _encode_numeric(value: Any) -> str:
    return str(value)


def _encode_json(value: Any) -> str:
    try:
        text = _dump_json(value)
    except ValueError:  # NaN or infinity somewhere inside: JSON has null for them
        text = _dump_json(_finite(value))
    return text.translate(_COPY_ESCAPES)


def _dump_json(value: Any) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(inner) for inner in value]
    return value


_CSV_CASTS: dict[str, str | None] = {
    "TEXT": None,
    "BIGINT": "int64",
    "INTEGER": "int64",
    "SMALLINT": "int64",
    "DOUBLE PRECISION": "float64",
    "REAL": "float64",
    "BOOLEAN": None,
}
"""Column types Arrow's CSV writer renders as PostgreSQL reads them, and the Arrow type
each is written as (NULL: unquoted empty; strings always quoted; nan and inf as such)."""

_ENCODERS: dict[str, Encoder] = {
    "TEXT": _encode_text,
    "BIGINT": _encode_int,
    "INTEGER": _encode_int,
    "SMALLINT": _encode_int,
    "NUMERIC": _encode_numeric,
    "DOUBLE PRECISION": _encode_float,
    "REAL": _encode_float,
    "BOOLEAN": _encode_bool,
    "BYTEA": _encode_bytes,
    "DATE": _encode_temporal,
    "TIME": _encode_temporal,
    "TIMESTAMP": _encode_temporal,
    "TIMESTAMPTZ": _encode_temporal,
    "INTERVAL": _encode_interval,
    "JSONB": _encode_json,
}


def _chunk(lines: list[str]) -> bytes:
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    stem = Path(name).stem if Path(name).suffix.lower() in FILE_BUILDERS else name
    return stem or name


def _hf() -> Any:
    """The ``datasets`` library, imported on first use (it is slow to import)."""
    import datasets

    return datasets


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
