"""pgml.load_dataset planning: places, splits, column types and COPY text, all offline."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import datasets  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from handlers import datasets as planning
from handlers.datasets import DatasetPlan
from handlers.errors import PgmlError
from handlers.files import FileRights

_UNESCAPES = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.chdir(tmp_path)
    datasets.disable_progress_bars()


def decode_field(text: str) -> str | None:
    if text == "\\N":
        return None
    return re.sub(r"\\[\\nrt]", lambda m: _UNESCAPES[m.group(0)], text)


def decode_copy(data: bytes) -> list[list[str | None]]:
    """Parse COPY text format (only the escapes the encoder emits) back into fields."""
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [[decode_field(f) for f in line.split("\t")] for line in text.split("\n")[:-1]]


def all_rows(plan: DatasetPlan, **kwargs: int) -> list[list[str | None]]:
    chunks = list(plan.rows(**kwargs))
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    return decode_copy(b"".join(chunks))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def save_dict(path: Path, splits: dict[str, dict[str, list[Any]]], features: Any) -> Path:
    parts = {n: datasets.Dataset.from_dict(d, features=features) for n, d in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def plan_dataset(*args: Any, rights: FileRights | None = None) -> DatasetPlan:
    """The plan, for a caller that may read any server file (unless ``rights`` are given)."""
    return planning.plan_dataset(*args, rights or FileRights(anywhere=True))


def expect_error(sqlstate: str, *args: Any) -> PgmlError:
    with pytest.raises(PgmlError) as caught:
        plan_dataset(*args)
    assert caught.value.sqlstate == sqlstate, caught.value.message
    return caught.value


# --- local files ------------------------------------------------------------------------------


def test_jsonl_file_types_nulls_nesting_and_unicode(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {
            "text": "héllo 世界 🙂",
            "n": 1,
            "x": 0.5,
            "ok": True,
            "meta": {"a": [1, 2]},
            "tags": ["x"],
        },
        {"text": None, "n": None, "x": None, "ok": None, "meta": None, "tags": None},
        {"text": "a\tb\nc\\d\re", "n": -7, "x": 1e300, "ok": False, "meta": {"a": []}, "tags": []},
    ]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    plan = plan_dataset(str(path), None, None, {}, None)
    assert plan.table_name == "reviews"
    assert plan.columns == [
        ("text", "TEXT"),
        ("n", "BIGINT"),
        ("x", "DOUBLE PRECISION"),
        ("ok", "BOOLEAN"),
        ("meta", "JSONB"),
        ("tags", "JSONB"),
    ]
    assert all_rows(plan) == [
        ["héllo 世界 🙂", "1", "0.5", "t", '{"a":[1,2]}', '["x"]'],
        [None] * 6,
        ["a\tb\nc\\d\re", "-7", "1e+300", "f", '{"a":[]}', "[]"],
    ]
    raw = b"".join(plan.rows())
    assert "héllo 世界 🙂".encode() in raw
    assert b"a\\tb\\nc\\\\d\\re" in raw


def test_csv_file(tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("id,name,score\n1,ann,1.5\n2,,\n3,bob,-2.25\n")
    plan = plan_dataset(str(tmp_path / "scores.csv"), None, None, None, None)
    assert plan.table_name == "scores"
    assert plan.columns == [("id", "BIGINT"), ("name", "TEXT"), ("score", "DOUBLE PRECISION")]
    assert all_rows(plan) == [["1", "ann", "1.5"], ["2", None, None], ["3", "bob", "-2.25"]]


def test_parquet_file_with_narrow_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i32": pa.array([1, None], pa.int32()),
            "i16": pa.array([2, 3], pa.int16()),
            "u8": pa.array([4, 5], pa.uint8()),
            "f32": pa.array([0.25, float("nan")], pa.float32()),
            "f64": pa.array([float("inf"), float("-inf")], pa.float64()),
            "flag": pa.array([True, False]),
            "big": pa.array(["x", "y"], pa.large_string()),
            "when": pa.array([0, 86_400_000_000], pa.timestamp("us")),
            "items": pa.array([[{"k": 1.5}], []], pa.list_(pa.struct([("k", pa.float64())]))),
        }
    )
    pq.write_table(table, tmp_path / "narrow.parquet")
    plan = plan_dataset(str(tmp_path / "narrow.parquet"), None, None, {}, None)
    assert plan.table_name == "narrow"
    assert dict(plan.columns) == {
        "i32": "INTEGER",
        "i16": "SMALLINT",
        "u8": "SMALLINT",
        "f32": "REAL",
        "f64": "DOUBLE PRECISION",
        "flag": "BOOLEAN",
        "big": "TEXT",
        "when": "TIMESTAMP",
        "items": "JSONB",
    }
    assert all_rows(plan) == [
        ["1", "2", "4", "0.25", "Infinity", "t", "x", "1970-01-01T00:00:00", '[{"k":1.5}]'],
        [None, "3", "5", "NaN", "-Infinity", "f", "y", "1970-01-02T00:00:00", "[]"],
    ]


def test_folder_of_split_files(tmp_path: Path) -> None:
    folder = tmp_path / "local_mix"
    write_jsonl(folder / "test.jsonl", [{"t": "c"}])
    write_jsonl(folder / "train.jsonl", [{"t": "a"}, {"t": "b"}])
    plan = plan_dataset(str(folder), None, None, {}, None)
    assert plan.table_name == "local_mix"
    assert all_rows(plan) == [["a"], ["b"], ["c"]]
    assert all_rows(plan_dataset(str(folder), None, None, {"split": "test"}, None)) == [["c"]]


# --- saved datasets, splits and features -------------------------------------------------------


def test_saved_dataset_dict_orders_splits_and_skips_unsupervised(tmp_path: Path) -> None:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    folder = save_dict(
        tmp_path / "saved",
        {
            "test": {"text": ["t1"], "label": [1]},
            "unsupervised": {"text": ["u1"], "label": [-1]},
            "train": {"text": ["a", "b"], "label": [0, 1]},
        },
        features,
    )
    plan = plan_dataset(str(folder), None, None, {}, None)
    assert plan.table_name == "saved"
    assert plan.columns == [("text", "TEXT"), ("label", "BIGINT")]
    assert plan.row_count_hint == 3
    assert all_rows(plan) == [["a", "0"], ["b", "1"], ["t1", "1"]]
    only = plan_dataset(str(folder), None, None, {"split": "unsupervised"}, None)
    assert all_rows(only) == [["u1", "-1"]]
    capped = plan_dataset(str(folder), None, 2, {}, None)
    assert capped.row_count_hint == 2
    assert all_rows(capped, batch_rows=1) == [["a", "0"], ["b", "1"]]
    none = plan_dataset(str(folder), None, 0, {}, None)
    assert none.columns == plan.columns
    assert list(none.rows()) == []


def test_translation_feature_is_jsonb(tmp_path: Path) -> None:
    features = datasets.Features(
        {"id": datasets.Value("string"), "translation": datasets.Translation(["en", "es"])}
    )
    pair = {"en": 'Say "hi"\t\\', "es": "Di «hola»"}
    folder = save_dict(
        tmp_path / "pairs", {"train": {"id": ["0"], "translation": [pair]}}, features
    )
    plan = plan_dataset(str(folder), None, None, {}, None)
    assert plan.columns == [("id", "TEXT"), ("translation", "JSONB")]
    [[_, value]] = all_rows(plan)
    assert value is not None
    assert json.loads(value) == pair
    assert value == json.dumps(pair, ensure_ascii=False, separators=(",", ":"))


def test_five_megabyte_text_field(tmp_path: Path) -> None:
    big = ("ab\\c\td\n" * 700_000)[:5_000_000]
    path = write_jsonl(tmp_path / "big.jsonl", [{"id": 1, "body": big}, {"id": 2, "body": "x"}])
    rows = all_rows(plan_dataset(str(path), None, None, {}, None))
    assert rows == [["1", big], ["2", "x"]]


def test_rows_stream_with_bounded_memory(tmp_path: Path) -> None:
    count = 200_000
    path = tmp_path / "many.jsonl"
    with path.open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": i, "text": f"row {i} " * 40}) + "\n")
    size = path.stat().st_size
    plan = plan_dataset(str(path), None, None, {}, None)
    seen = chunks = 0
    tracemalloc.start()
    try:
        for chunk in plan.rows(batch_rows=2_000):
            seen += chunk.count(b"\n")
            chunks += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == count
    assert chunks >= count // 2_000
    assert peak < size / 5, f"peak {peak} bytes while streaming {size} bytes"


def test_float_and_json_edge_values(tmp_path: Path) -> None:
    features = datasets.Features(
        {"f": datasets.Value("float64"), "j": {"v": datasets.List(datasets.Value("float64"))}}
    )
    data: dict[str, list[Any]] = {
        "f": [0.1, -0.0, float("nan")],
        "j": [{"v": [float("nan"), 1.0]}, {"v": []}, None],
    }
    folder = save_dict(tmp_path / "edge", {"train": data}, features)
    rows = all_rows(plan_dataset(str(folder), None, None, {}, None))
    assert rows == [["0.1", '{"v":[null,1.0]}'], ["-0.0", '{"v":[]}'], ["NaN", None]]


# --- the guide's calls against a datasets folder --------------------------------------------


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    imdb = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    save_dict(
        root / "imdb",
        {
            "train": {"text": ["good", "bad"], "label": [1, 0]},
            "test": {"text": ["fine"], "label": [1]},
            "unsupervised": {"text": ["?"], "label": [-1]},
        },
        imdb,
    )
    kde4 = datasets.Features(
        {"id": datasets.Value("string"), "translation": datasets.Translation(["en", "es"])}
    )
    pair = {"en": "Open file", "es": "Abrir archivo"}
    save_dict(root / "kde4" / "en-es", {"train": {"id": ["0"], "translation": [pair]}}, kde4)
    write_jsonl(
        root / "kde4" / "en-fr" / "train.jsonl",
        [{"id": "0", "translation": {"en": "Open", "fr": "Ouvrir"}}],
    )
    billsum = datasets.Features(
        {"text": datasets.Value("string"), "summary": datasets.Value("string")}
    )
    save_dict(
        root / "billsum",
        {
            "train": {"text": ["t"], "summary": ["s"]},
            "test": {"text": ["u"], "summary": ["v"]},
            "ca_test": {"text": ["ca bill"], "summary": ["ca summary"]},
        },
        billsum,
    )
    write_jsonl(root / "bookcorpus.jsonl", [{"text": f"line {i}"} for i in range(1000)])
    write_jsonl(
        root / "FinGPT" / "fingpt-sentiment-train" / "train.jsonl",
        [{"input": "up", "output": "positive"}],
    )
    return root


def test_guide_imdb(mirror: Path) -> None:
    plan = plan_dataset("imdb", None, None, {}, mirror)
    assert plan.table_name == "imdb"
    assert plan.columns == [("text", "TEXT"), ("label", "BIGINT")]
    assert all_rows(plan) == [["good", "1"], ["bad", "0"], ["fine", "1"]]


def test_guide_kde4_picks_the_configuration_from_kwargs(mirror: Path) -> None:
    plan = plan_dataset("kde4", None, None, '{"lang1": "en", "lang2": "es"}', mirror)
    assert plan.table_name == "kde4"
    assert plan.columns == [("id", "TEXT"), ("translation", "JSONB")]
    assert all_rows(plan) == [["0", '{"en":"Open file","es":"Abrir archivo"}']]
    by_subset = plan_dataset("kde4", "en-es", None, {}, mirror)
    assert all_rows(by_subset) == all_rows(plan)
    french = plan_dataset("kde4", None, None, {"lang1": "en", "lang2": "fr"}, mirror)
    assert all_rows(french) == [["0", '{"en":"Open","fr":"Ouvrir"}']]


def test_builder_kwargs_are_accepted_by_a_flat_mirror(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    write_jsonl(root / "kde4.jsonl", [{"translation": {"en": "Yes", "es": "Sí"}}])
    plan = plan_dataset("kde4", None, None, {"lang1": "en", "lang2": "es"}, root)
    assert all_rows(plan) == [['{"en":"Yes","es":"Sí"}']]


def test_guide_billsum_split(mirror: Path) -> None:
    plan = plan_dataset("billsum", None, None, {"split": "ca_test"}, mirror)
    assert plan.table_name == "billsum"
    assert all_rows(plan) == [["ca bill", "ca summary"]]
    everything = all_rows(plan_dataset("billsum", None, None, {}, mirror))
    assert everything == [["t", "s"], ["u", "v"], ["ca bill", "ca summary"]]


def test_guide_bookcorpus_limit(mirror: Path) -> None:
    plan = plan_dataset("bookcorpus", None, 100, {}, mirror)
    assert plan.table_name == "bookcorpus"
    assert plan.row_count_hint == 100
    rows = all_rows(plan, batch_rows=30)
    assert rows == [[f"line {i}"] for i in range(100)]


def test_hub_style_id_in_mirror(mirror: Path) -> None:
    plan = plan_dataset("FinGPT/fingpt-sentiment-train", None, None, {}, mirror)
    assert plan.table_name == "FinGPT/fingpt-sentiment-train"
    assert all_rows(plan) == [["up", "positive"]]


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_dataset_names_every_place(mirror: Path) -> None:
    error = expect_error("42704", "no_such_set", None, None, {}, mirror)
    assert error.message == 'dataset "no_such_set" was not found'
    assert error.detail is not None
    assert "no_such_set.jsonl" in error.detail
    assert "Hugging Face hub" in error.detail
    assert str(mirror) not in error.detail  # the server's folders are not the caller's
    path = expect_error("42704", "./no_such_set.csv", None, None, {}, mirror)
    assert "local path ./no_such_set.csv" in (path.detail or "")
    assert str(Path.cwd()) not in (path.detail or "")
    unconfigured = expect_error("42704", "no_such_set", None, None, {}, None)
    assert "--datasets-dir" in (unconfigured.detail or "")


def test_names_outside_the_datasets_folder_are_not_looked_up_there(mirror: Path) -> None:
    (mirror.parent / "outside.jsonl").write_text('{"a": 1}\n')
    error = expect_error("42704", "../outside", None, None, {}, mirror)
    assert "not a name inside it" in (error.detail or "")


def test_negative_limit(mirror: Path) -> None:
    error = expect_error("22023", "imdb", None, -1, {}, mirror)
    assert "limit" in error.message


def test_unknown_split_lists_the_available_ones(mirror: Path) -> None:
    error = expect_error("22023", "imdb", None, None, {"split": "validation"}, mirror)
    assert "validation" in error.message
    assert error.detail == "Available splits: train, test, unsupervised."


def test_image_feature_is_refused_naming_the_column(tmp_path: Path) -> None:
    blob = {"bytes": b"\x89PNG", "path": None}
    photos = datasets.Dataset.from_dict({"caption": ["cat"], "photo": [blob]})
    photos.cast_column("photo", datasets.Image()).save_to_disk(str(tmp_path / "pictures"))
    error = expect_error("0A000", str(tmp_path / "pictures"), None, None, {}, None)
    assert '"photo"' in error.message
    sounds = datasets.Dataset.from_dict({"m": [{"inner": [blob]}]})
    nested = datasets.Features({"m": {"inner": datasets.List(datasets.Audio())}})
    sounds.cast(nested).save_to_disk(str(tmp_path / "sound"))
    assert '"m"' in expect_error("0A000", str(tmp_path / "sound"), None, None, {}, None).message


@pytest.mark.parametrize(
    "kwargs",
    [
        "{not json",
        "[1, 2]",
        {"split": 3},
        {"split": ""},
        {"streaming": False},
        {"no_such_option": 1},
    ],
)
def test_malformed_kwargs(tmp_path: Path, kwargs: Any) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", [{"a": 1}])
    expect_error("22023", str(path), None, None, kwargs, None)


def test_folders_without_loadable_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    assert "no data files" in expect_error("22023", empty, None, None, {}, None).message
    (tmp_path / "scripted").mkdir()
    (tmp_path / "scripted" / "scripted.py").write_text("raise SystemExit\n")
    expect_error("0A000", str(tmp_path / "scripted"), None, None, {}, None)
    (tmp_path / "notes.txt").write_text("hello\n")
    notes = str(tmp_path / "notes.txt")
    assert "unknown type" in expect_error("0A000", notes, None, None, {}, None).message


def test_unknown_subset_of_a_saved_dataset(mirror: Path) -> None:
    error = expect_error("22023", "imdb", "plain_text", None, {}, mirror)
    assert "plain_text" in error.message


def test_copy_text_round_trips_tricky_values(tmp_path: Path) -> None:
    tricky = ["\\N", "\\", "tab\there", "cr\rlf\n", "", " ", "naïve ☃ \U0001f600", "\\\\n"]
    path = write_jsonl(tmp_path / "tricky.jsonl", [{"s": s, "j": {"s": s}} for s in tricky])
    rows = all_rows(plan_dataset(str(path), None, None, {}, None))
    assert [r[0] for r in rows] == tricky
    assert [json.loads(r[1] or "null")["s"] for r in rows] == tricky


# --- whose files --------------------------------------------------------------------------------


def refused(rights: FileRights, *args: Any) -> PgmlError:
    with pytest.raises(PgmlError) as caught:
        plan_dataset(*args, rights=rights)
    assert caught.value.sqlstate == "42501", caught.value.message
    return caught.value


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A readable file outside the datasets folder."""
    path = tmp_path / "secret.csv"
    path.write_text("line\nroot:x:0\n")
    return path


def test_a_path_outside_the_folders_is_refused_alike_whether_it_exists(
    mirror: Path, outside: Path
) -> None:
    rights = FileRights.of(mirror).with_answer(False, "loader")
    there = refused(rights, str(outside), None, None, {}, mirror)
    missing = refused(rights, str(outside.with_name("nothing.csv")), None, None, {}, mirror)
    assert there.message == f'permission denied to read server file "{outside}"'
    assert (there.detail, there.hint) == (missing.detail, missing.hint)
    assert missing.message == there.message.replace("secret.csv", "nothing.csv")
    assert there.hint is not None and "GRANT pg_read_server_files TO loader" in there.hint
    assert plan_dataset(str(outside), None, None, {}, mirror).row_count_hint is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data_files": "{outside}"},
        {"data_files": ["{outside}"]},
        {"data_files": {"train": "{outside}"}},
        {"data_files": {"train": ["{outside}"]}},
        {"data_files": "{outside_glob}"},
        {"data_dir": "{outside_dir}"},
        {"cache_dir": "{outside_dir}"},
    ],
)
def test_kwargs_that_name_paths_go_through_the_same_rule(
    mirror: Path, outside: Path, kwargs: dict[str, Any]
) -> None:
    text = (
        json.dumps(kwargs)
        .replace("{outside}", str(outside))
        .replace("{outside_glob}", str(outside.parent / "*.csv"))
        .replace("{outside_dir}", str(outside.parent))
    )
    rights = FileRights.of(mirror).with_answer(False, "loader")
    for source in ("some/hub-dataset", str(mirror / "bookcorpus.jsonl")):
        refused(rights, source, None, None, text, mirror)


@pytest.mark.parametrize("kwargs", [{"data_files": "../secret.csv"}, {"data_dir": ".."}])
def test_a_builders_relative_paths_are_the_datasets_folders(
    mirror: Path, outside: Path, kwargs: dict[str, Any]
) -> None:
    rights = FileRights.of(mirror).with_answer(False, "loader")
    refused(rights, "csv", None, None, kwargs, mirror)


@pytest.mark.parametrize(
    "kwargs", [{"data_files": "secret.csv"}, {"data_dir": "."}, {"cache_dir": "cache"}]
)
def test_a_relative_path_needs_a_folder_it_is_relative_to(
    outside: Path, kwargs: dict[str, Any]
) -> None:
    """Without a datasets folder a relative path is refused, even for a caller who may
    read any server file: it would be the working directory's (here ``secret.csv``'s)."""
    expect_error("22023", "csv", None, None, kwargs, None)


@pytest.mark.parametrize("source", ["secret.csv", "secret", "./secret.csv"])
def test_nothing_is_looked_up_in_the_working_directory(
    mirror: Path, outside: Path, source: str
) -> None:
    expect_error("42704", source, None, None, {}, mirror)
    expect_error("42704" if source != "./secret.csv" else "22023", source, None, None, {}, None)


def test_relative_kwargs_paths_may_not_climb_out_of_a_local_folder(
    tmp_path: Path, outside: Path
) -> None:
    root, models = tmp_path / "datasets", tmp_path / "models"
    root.mkdir()
    write_jsonl(models / "local" / "train.jsonl", [{"text": "a"}])
    rights = FileRights.of(root, models).with_answer(False, "loader")
    folder = str(models / "local")
    refused(rights, folder, None, None, {"data_files": "../../secret.csv"}, root)
    refused(rights, folder, None, None, {"data_files": "*/../../../secret.csv"}, root)
    plan = plan_dataset(folder, None, None, {"data_files": "train.jsonl"}, root, rights=rights)
    assert all_rows(plan) == [["a"]]


def test_links_out_of_the_datasets_folder_are_refused(mirror: Path, outside: Path) -> None:
    rights = FileRights.of(mirror).with_answer(False, "loader")
    (mirror / "linked.csv").symlink_to(outside)
    (mirror / "linked_folder").mkdir()
    (mirror / "linked_folder" / "train.csv").symlink_to(outside)
    (mirror / "whole_link").symlink_to(outside.parent, target_is_directory=True)
    for source in ("linked", "linked_folder", "whole_link", "../secret"):
        with pytest.raises(PgmlError) as caught:
            plan_dataset(source, None, None, {}, mirror, rights=rights)
        assert caught.value.sqlstate in ("42501", "42704"), caught.value.message
        assert "root:x" not in str(caught.value.detail)
    refused(rights, "linked", None, None, {}, mirror)
    refused(rights, "linked_folder", None, None, {}, mirror)
    refused(rights, str(mirror / "whole_link" / "secret.csv"), None, None, {}, mirror)
    assert plan_dataset("linked", None, None, {}, mirror).columns == [("line", "TEXT")]


def test_unasked_rights_stop_before_reading(mirror: Path, outside: Path) -> None:
    from handlers.files import NeedsRight

    with pytest.raises(NeedsRight):
        plan_dataset(str(outside), None, None, {}, mirror, rights=FileRights.of(mirror))
    inside = plan_dataset("imdb", None, None, {}, mirror, rights=FileRights.of(mirror))
    assert inside.table_name == "imdb"


@pytest.mark.parametrize(
    "value",
    ["file:///etc/passwd", "zip://a.csv::/tmp/x.zip", "simplecache::https://x/y.csv", "s3://b/k"],
)
def test_urls_that_reach_server_files_are_refused(mirror: Path, value: str) -> None:
    error = expect_error("22023", "some/hub-dataset", None, None, {"data_files": value}, mirror)
    assert "http(s)://" in error.message


def test_errors_name_the_datasets_folder_by_its_flag(mirror: Path) -> None:
    (mirror / "nothing" / "sub").mkdir(parents=True)
    (mirror / "broken").mkdir()
    (mirror / "broken" / "state.json").write_text("{")
    for name in ("nothing", "broken"):
        error = expect_error("22023", name, None, None, {}, mirror)
        assert str(mirror) not in error.message and "<--datasets-dir>" in error.message


@pytest.mark.parametrize("key", ["download_config", "storage_options"])
def test_loader_settings_are_the_proxys(mirror: Path, key: str) -> None:
    expect_error("22023", "imdb", None, None, {key: {}}, mirror)
