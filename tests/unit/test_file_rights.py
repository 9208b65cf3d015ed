"""What a caller may have loaded: server paths, model names, remote code (no PostgreSQL:
the caller's privilege is given as known)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handlers.allowlist import ModelPolicy, matches
from handlers.errors import PgmlError
from handlers.files import FileRights, NeedsRight
from handlers.models import ModelResolver
from handlers.pipelines import task_spec, transform_args


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A models folder with a model, and a model outside it."""
    models = tmp_path / "models"
    model_folder(models / "tiny" / "bert")
    return models, model_folder(tmp_path / "elsewhere" / "model")


def test_models_in_the_folder_need_no_privilege(layout: tuple[Path, Path]) -> None:
    models, _ = layout
    resolver = ModelResolver(models_dir=models, allow_download=False)
    rights = FileRights.of(models)
    assert resolver.resolve("tiny/bert", rights) == (models / "tiny" / "bert").resolve()
    assert resolver.local("some/hub-id", rights) is None


@pytest.mark.parametrize("exists", [True, False])
def test_a_model_path_outside_is_refused_alike(layout: tuple[Path, Path], exists: bool) -> None:
    models, outside = layout
    resolver = ModelResolver(models_dir=models, allow_download=False)
    name = str(outside if exists else outside.with_name("missing"))
    with pytest.raises(NeedsRight):
        resolver.resolve(name, FileRights.of(models))
    with pytest.raises(PgmlError) as caught:
        resolver.resolve(name, FileRights.of(models).with_answer(False, "alice"))
    assert caught.value.sqlstate == "42501"
    assert caught.value.message == f'permission denied to read server file "{name}"'
    if exists:
        granted = FileRights.of(models).with_answer(True, "alice")
        assert resolver.resolve(name, granted) == outside.resolve()


def test_links_and_dots_out_of_the_models_folder(layout: tuple[Path, Path]) -> None:
    models, outside = layout
    (models / "tiny" / "linked").symlink_to(outside, target_is_directory=True)
    inner = model_folder(models / "tiny" / "weights")
    (inner / "model.safetensors").symlink_to(outside / "config.json")
    resolver = ModelResolver(models_dir=models, allow_download=False)
    rights = FileRights.of(models).with_answer(False, "alice")
    for name in ("tiny/linked", "tiny/weights", str(models / "tiny" / "linked")):
        with pytest.raises(PgmlError) as caught:
            resolver.resolve(name, rights)
        assert caught.value.sqlstate == "42501", name
    relative = "tiny/../../elsewhere/model"
    assert resolver.local(relative, rights) is None  # not a name in the folder
    with pytest.raises(PgmlError):
        resolver.local(str(models) + "/../elsewhere/model", rights)


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("tiny/bert", "tiny/*", True),
        ("tiny/a/b", "tiny/*", False),
        ("tiny/../../etc", "tiny/*", False),
        ("tiny/../x", "tiny/*/*", False),
        ("tiny/..", "tiny/*", False),
        ("tiny/.", "tiny/?", False),
        ("/tmp/x/model", "/tmp/*/model", True),
        ("/tmp/x/y/model", "/tmp/*/model", False),
        ("org/name", "*", False),
        ("name", "*", True),
    ],
)
def test_allow_patterns_match_segment_by_segment(name: str, pattern: str, expected: bool) -> None:
    assert matches(name, pattern) is expected
    policy = ModelPolicy.from_patterns([pattern], [])
    if expected:
        policy.check(name)
    else:
        with pytest.raises(PgmlError) as caught:
            policy.check(name)
        assert caught.value.sqlstate == "42501"


@pytest.mark.parametrize("value", [1, "yes", "true", "True", 1.0, [True], {"x": True}, None])
def test_trust_remote_code_is_json_true_or_false(value: Any) -> None:
    task = {"task": "text-classification", "model": "tiny/bert", "trust_remote_code": value}
    with pytest.raises(PgmlError) as caught:
        task_spec(task)
    assert caught.value.sqlstate == "22023"
    assert "trust_remote_code" in caught.value.message


def test_trust_remote_code_true_and_false() -> None:
    base = {"task": "text-classification", "model": "tiny/bert"}
    assert task_spec(base | {"trust_remote_code": True}).remote_code
    assert not task_spec(base | {"trust_remote_code": False}).remote_code


@pytest.mark.parametrize(
    "extra",
    [
        {"model_kwargs": {"trust_remote_code": True}},
        {"cache_dir": "/tmp"},
        {"model_kwargs": {"cache_dir": "/tmp"}},
        {"model_kwargs": {"subfolder": "../../x"}},
        {"gguf_file": "/tmp/x.gguf"},
        {"pipeline_class": "x.Y"},
        {"config": 3},
        {"tokenizer": ""},
    ],
)
def test_task_options_that_load_other_files_are_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(PgmlError) as caught:
        task_spec({"task": "text-classification", "model": "tiny/bert"} | extra)
    assert caught.value.sqlstate == "22023"


def test_every_model_name_of_a_task() -> None:
    spec = task_spec(
        {
            "task": "text-classification",
            "model": "tiny/bert",
            "config": "/srv/config",
            "tokenizer": "tiny/tok",
        }
    )
    assert spec.model_names() == ["tiny/bert", "/srv/config", "tiny/tok"]


@pytest.mark.parametrize(
    "args",
    [
        {"custom_generate": "/srv/repo", "trust_remote_code": True},
        {"trust_remote_code": True},
        {"assistant_model": "/srv/model"},
    ],
)
def test_call_arguments_load_no_code(args: dict[str, Any]) -> None:
    with pytest.raises(PgmlError) as caught:
        transform_args(args)
    assert caught.value.sqlstate == "22023"
    assert transform_args({"max_new_tokens": 3}) == {"max_new_tokens": 3}
