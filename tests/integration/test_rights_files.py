"""The proxy never lends its own files or code: real roles through psycopg.

Each case is refused with the SQLSTATE PostgreSQL would give (42501 for a server file, as
``COPY ... FROM`` a file is; 22023 for a bad value), leaving the catalog and the file
system as they were, and the same call goes through once the role is granted
``pg_read_server_files``.  Files inside the datasets and models folders need no grant;
links and ``..`` out of them do."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import OFFLINE
from tests.integration.test_serving import make_reviews
from tests.support.pgserver import PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_pipelines import GENERATION, SENTIMENT, build_pipeline_models

SECRET = "root:$6$salt$hash:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
MARKER = "remote-code-ran"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The models and datasets folders, and files outside both (one readable only by the
    proxy's operating-system user), with links from inside the folders to them."""
    root = tmp_path_factory.mktemp("rights")
    models = build_pipeline_models(root / "models")
    datasets = root / "datasets"
    datasets.mkdir()
    (datasets / "reviews.csv").write_text("text,label\ngood,1\nbad,0\n")
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    shutil.copytree(models / SENTIMENT, outside / "model")
    (datasets / "leak.csv").symlink_to(secret)
    (datasets / "leak_dir").symlink_to(outside, target_is_directory=True)
    (models / "tiny" / "leak").symlink_to(outside / "model", target_is_directory=True)
    remote = outside / "remote"
    shutil.copytree(models / SENTIMENT, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(root / MARKER)!r}).write_text('ran')\n"
        "from transformers import DistilBertConfig as EvilConfig\n"
    )
    (remote / "custom_generate").mkdir()
    (remote / "custom_generate" / "generate.py").write_text(
        f"import pathlib\npathlib.Path({str(root / MARKER)!r}).write_text('ran')\n"
        "def generate(model, **kwargs):\n    return model.generate(**kwargs)\n"
    )
    broken = models / "tiny" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "distilbert", "dim": ')
    pickled = models / "tiny" / "pickled"
    shutil.copytree(models / SENTIMENT, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(root / MARKER)))
    adapter = models / "tiny" / "adapter"
    shutil.copytree(models / SENTIMENT, adapter)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(outside / "model")})
    )
    garbage = models / "tiny" / "garbage"
    shutil.copytree(models / SENTIMENT, garbage)
    for weights in garbage.glob("*.safetensors"):
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return {"root": root, "models": models, "datasets": datasets, "outside": outside}


class _Evil:
    """A pickle that writes the marker file when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "ran"))


@pytest.fixture(scope="module")
def proxy(cluster: PostgresCluster, layout: dict[str, Path]) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--datasets-dir",
        str(layout["datasets"]),
        "--models-dir",
        str(layout["models"]),
        env=OFFLINE,
        cwd=layout["root"],  # which holds the files outside the folders
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def catalog(proxy: ProxyProcess) -> None:
    """The catalog exists (a load makes it)."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT * FROM pgml.load_dataset('reviews')").fetchall()
        conn.execute("DROP TABLE pgml.reviews")


@pytest.fixture(scope="module")
def loader(cluster: PostgresCluster, catalog: None) -> Iterator[str]:
    """A login role that may create tables in schema pgml, and nothing else."""
    role = f"loader_{uuid.uuid4().hex[:6]}"
    cluster.psql(f"CREATE ROLE {role} LOGIN; GRANT CREATE ON SCHEMA pgml TO {role}")
    yield role
    cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.fixture
def granted(cluster: PostgresCluster, loader: str) -> Iterator[Callable[[], None]]:
    """Grants the loader pg_read_server_files when called; revoked afterwards."""
    yield lambda: cluster.psql(f"GRANT pg_read_server_files TO {loader}")
    cluster.psql(f"REVOKE pg_read_server_files FROM {loader}")


def state(direct: psycopg.Connection[Any], layout: dict[str, Path]) -> tuple[Any, ...]:
    """The catalog's relations and rows, and every file under the test's folders."""
    relations = direct.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'pgml' ORDER BY 1"
    ).fetchall()
    projects = direct.execute("SELECT count(*) FROM pgml.projects").fetchone()
    files = sorted(
        (str(p), p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in layout["root"].rglob("*")
        if MARKER not in p.name
    )
    return relations, projects, files


def refused(
    proxy: ProxyProcess,
    user: str,
    sql: str,
    sqlstate: str = "42501",
    setup: str | None = None,
) -> psycopg.Error:
    with psycopg.connect(proxy.dsn(user), autocommit=True) as conn:
        if setup:
            conn.execute(setup)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql).fetchall()
        assert caught.value.sqlstate == sqlstate, caught.value.diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    return caught.value


def rows(proxy: ProxyProcess, user: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(proxy.dsn(user), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def lit(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "'" + text.replace("'", "''") + "'"


def load_sql(source: str, kwargs: dict[str, Any] | None = None) -> str:
    extra = f", kwargs => {lit(kwargs)}" if kwargs is not None else ""
    return f"SELECT * FROM pgml.load_dataset({lit(source)}{extra})"


def transform_sql(task: dict[str, Any]) -> str:
    return f"SELECT pgml.transform({lit(task)}::jsonb, inputs => ARRAY['I love SQL'])"


# --- datasets -------------------------------------------------------------------------------


def test_a_server_file_needs_pg_read_server_files(
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
) -> None:
    secret = layout["outside"] / "secret.csv"
    before = state(direct, layout)
    there = refused(proxy, loader, load_sql(str(secret)))
    missing = refused(proxy, loader, load_sql(str(secret.with_name("nothing.csv"))))
    assert there.diag.message_primary == f'permission denied to read server file "{secret}"'
    assert missing.diag.message_primary == there.diag.message_primary.replace(
        "secret.csv", "nothing.csv"
    )
    assert there.diag.message_detail == missing.diag.message_detail
    assert f"GRANT pg_read_server_files TO {loader}" in (there.diag.message_hint or "")
    assert state(direct, layout) == before
    granted()
    assert rows(proxy, loader, load_sql(str(secret))) == [("secret", 1)]
    direct.execute("DROP TABLE pgml.secret")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data_files": "{secret}", "sep": "\u0001", "quoting": 3, "column_names": ["line"]},
        {"data_files": ["{secret}"], "column_names": ["line"]},
        {"data_files": {"train": "{secret}"}, "column_names": ["line"]},
        {"data_files": "{outside}/*.csv", "column_names": ["line"]},
        {"data_dir": "{outside}"},
        {"cache_dir": "{outside}"},
    ],
    ids=["data_files", "list", "by_split", "glob", "data_dir", "cache_dir"],
)
def test_kwargs_that_name_server_files(
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    kwargs: dict[str, Any],
) -> None:
    """The issue's /etc/shadow call, with a file of the same shape, and its variations."""
    text = json.dumps(kwargs | {"split": "train"})
    text = text.replace("{secret}", str(layout["outside"] / "secret.csv"))
    text = text.replace("{outside}", str(layout["outside"]))
    before = state(direct, layout)
    for source in ("csv", "some/hub-dataset", str(layout["datasets"] / "reviews.csv")):
        error = refused(proxy, loader, load_sql(source, json.loads(text)))
        assert "root:" not in str(error)
    assert state(direct, layout) == before


@pytest.mark.parametrize("url", ["file:///etc/passwd", "zip://x.csv::/tmp/a.zip"])
def test_urls_to_server_files_are_bad_values(proxy: ProxyProcess, loader: str, url: str) -> None:
    refused(proxy, loader, load_sql("csv", {"data_files": url}), "22023")


def test_links_and_dots_out_of_the_datasets_folder(
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
) -> None:
    before = state(direct, layout)
    for source in ("leak", "leak_dir", str(layout["datasets"] / "leak_dir" / "secret.csv")):
        refused(proxy, loader, load_sql(source))
    climbed = refused(proxy, loader, load_sql("../outside/secret.csv"))  # from the datasets
    nothing = refused(proxy, loader, load_sql("../outside/nothing.csv"))
    assert climbed.diag.message_detail == nothing.diag.message_detail
    dotted = refused(proxy, loader, load_sql(str(layout["datasets"]) + "/../outside/secret.csv"))
    assert "outside/secret.csv" in (dotted.diag.message_primary or "")
    assert state(direct, layout) == before
    assert rows(proxy, loader, load_sql("reviews")) == [("reviews", 2)]  # inside: no grant
    direct.execute("DROP TABLE pgml.reviews")
    granted()
    assert rows(proxy, loader, load_sql("leak")) == [("leak", 1)]
    direct.execute("DROP TABLE pgml.leak")


@pytest.mark.parametrize(
    ("source", "kwargs"),
    [
        ("outside", None),
        ("outside/secret.csv", None),
        ("cwd.csv", None),
        ("cwd", None),
        ("csv", {"data_files": "cwd.csv", "split": "train"}),
        ("csv", {"data_dir": "outside", "split": "train"}),
    ],
)
def test_nothing_is_read_from_the_proxys_working_directory(
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
    source: str,
    kwargs: dict[str, Any] | None,
) -> None:
    """The proxy runs in the test's root folder: what lies there is no dataset, not even
    for a role that may read any server file; a relative path is the datasets folder's."""
    (layout["root"] / "cwd.csv").write_text(SECRET)
    granted()
    before = state(direct, layout)
    for user in (loader, "postgres"):
        error = refused(proxy, user, load_sql(source, kwargs), "42704")
        assert str(layout["root"]) not in str(error.diag.message_detail)
    assert state(direct, layout) == before


def test_errors_name_no_server_folder(
    proxy: ProxyProcess, loader: str, layout: dict[str, Path]
) -> None:
    error = refused(proxy, loader, load_sql("no_such_dataset"), "42704")
    detail = error.diag.message_detail or ""
    assert "no_such_dataset" in detail
    for folder in (str(layout["root"]), os.getcwd()):
        assert folder not in detail and folder not in (error.diag.message_hint or "")


def test_set_role_counts(proxy: ProxyProcess, loader: str, layout: dict[str, Path]) -> None:
    """The superuser's session after SET ROLE has the role's rights, not its own."""
    secret = str(layout["outside"] / "secret.csv")
    refused(proxy, "postgres", load_sql(secret), setup=f"SET ROLE {loader}")


# --- models ---------------------------------------------------------------------------------


def test_a_model_outside_the_models_folder(
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
) -> None:
    model = str(layout["outside"] / "model")
    task = {"task": "text-classification", "model": model}
    before = state(direct, layout)
    there = refused(proxy, loader, transform_sql(task))
    missing = refused(proxy, loader, transform_sql(task | {"model": model + "_missing"}))
    assert there.diag.message_detail == missing.diag.message_detail
    inside = {"task": "text-classification", "model": SENTIMENT}
    for key in ("config", "tokenizer"):
        refused(proxy, loader, transform_sql(inside | {key: model}))
    refused(proxy, loader, transform_sql(inside | {"model": "tiny/leak"}))
    adapter = refused(proxy, loader, transform_sql(inside | {"model": "tiny/adapter"}))
    assert adapter.diag.message_primary == there.diag.message_primary  # its base model
    refused(proxy, loader, f"SELECT pgml.embed({lit(model)}, 'x')")
    refused(proxy, loader, f"SELECT pgml.embed(m, 'x') FROM (VALUES ({lit(model)})) AS t(m)")
    refused(proxy, loader, f"SELECT * FROM pgml.rank({lit(model)}, 'q', ARRAY['d'])")
    assert state(direct, layout) == before
    assert rows(proxy, loader, transform_sql(inside))  # in the models folder: no grant
    granted()
    assert rows(proxy, loader, transform_sql(task))
    assert rows(proxy, loader, transform_sql(inside | {"config": model, "tokenizer": model}))


def test_a_loaded_model_is_checked_again(
    proxy: ProxyProcess, loader: str, layout: dict[str, Path]
) -> None:
    """The superuser loads a server path's model; the loader may not use it."""
    task = {"task": "text-classification", "model": str(layout["outside"] / "model")}
    assert rows(proxy, "postgres", transform_sql(task))
    refused(proxy, loader, transform_sql(task))


def store_adapter(direct: psycopg.Connection[Any], project: str, base: Path, work: Path) -> None:
    """A project whose deployed model is a LoRA adapter on ``base``, as ``pgml.tune`` stores
    one (written here by the superuser, as a role that may read ``base`` would tune it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from handlers.artifact import ADAPTER, Manifest

    model = AutoModelForSequenceClassification.from_pretrained(base)
    config = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_lin", "v_lin"])
    folder = work / project
    get_peft_model(model, config).save_pretrained(folder)
    labels = ["NEGATIVE", "POSITIVE"]
    Manifest("text-classification", 32, 8, labels, kind=ADAPTER, base_model=str(base)).write(folder)
    (project_id,) = direct.execute(
        "INSERT INTO pgml.projects (name, task) VALUES (%s, 'text-classification') RETURNING id",
        [project],
    ).fetchone() or (None,)
    (snapshot_id,) = direct.execute(
        "INSERT INTO pgml.snapshots (relation_name, y_column_name, status, analysis) "
        """VALUES ('reviews', ARRAY['label'], 'successful', '{"label_type": "text"}') """
        "RETURNING id"
    ).fetchone() or (None,)
    (model_id,) = direct.execute(
        "INSERT INTO pgml.models (project_id, snapshot_id, algorithm, status) "
        "VALUES (%s, %s, %s, 'successful') RETURNING id",
        [project_id, snapshot_id, str(base)],
    ).fetchone() or (None,)
    for path in sorted(folder.iterdir()):
        direct.execute(
            "INSERT INTO pgml.files (model_id, path, part, data) VALUES (%s, %s, 0, %s)",
            [model_id, path.name, path.read_bytes()],
        )
    direct.execute(
        "INSERT INTO pgml.deployments (project_id, model_id, strategy) VALUES (%s, %s, 'new')",
        [project_id, model_id],
    )


def test_a_served_adapters_base_model_is_checked_for_each_caller(
    cluster: PostgresCluster,
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
    tmp_path: Path,
) -> None:
    """An adapter tuned on a server path is served to a role only as that role could name
    the path itself, whether this proxy has loaded it or not."""
    project = f"adapter_{uuid.uuid4().hex[:6]}"
    store_adapter(direct, project, layout["outside"] / "model", tmp_path)
    predict = f"SELECT pgml.predict({lit(project)}, 'I love SQL')"
    per_row = f"SELECT pgml.predict({lit(project)}, t) FROM (VALUES ('a'), ('b')) AS v(t)"
    first = refused(proxy, loader, predict)  # not loaded yet
    assert first.diag.message_primary == (
        f'permission denied to read server file "{layout["outside"] / "model"}"'
    )
    assert rows(proxy, "postgres", predict)[0][0] in ("NEGATIVE", "POSITIVE")
    refused(proxy, loader, predict)  # loaded by the superuser
    refused(proxy, loader, per_row)
    granted()
    assert rows(proxy, loader, predict)[0][0] in ("NEGATIVE", "POSITIVE")
    assert len(rows(proxy, loader, per_row)) == 2
    with psycopg.connect(proxy.dsn(loader), autocommit=True) as conn:
        assert conn.execute(predict).fetchall()  # served: the check rides with statements now
        cluster.psql(
            f"REVOKE pg_read_server_files FROM {loader}; REVOKE SELECT ON pgml.models FROM PUBLIC"
        )
        try:
            with pytest.raises(psycopg.Error) as caught:  # the project's refusal comes first
                conn.execute(predict)
        finally:
            cluster.psql("GRANT SELECT ON pgml.models TO PUBLIC")
        assert caught.value.diag.message_primary == "permission denied for table models"


@pytest.mark.parametrize("value", [1, "yes", "true", 1.5, None, [True]])
def test_trust_remote_code_is_json_true(
    proxy: ProxyProcess, layout: dict[str, Path], value: Any
) -> None:
    task = {
        "task": "text-classification",
        "model": str(layout["outside"] / "remote"),
        "trust_remote_code": value,
    }
    refused(proxy, "postgres", transform_sql(task), "22023")
    config = task | {"model": SENTIMENT, "config": str(layout["outside"] / "remote")}
    refused(proxy, "postgres", transform_sql(config), "22023")
    nested = {"task": "text-classification", "model": SENTIMENT}
    nested["model_kwargs"] = {"trust_remote_code": value}
    refused(proxy, "postgres", transform_sql(nested), "22023")
    embed = f"SELECT pgml.embed({lit(task['model'])}, 'x', {lit({'trust_remote_code': value})})"
    refused(proxy, "postgres", embed, "22023")
    assert not (layout["root"] / MARKER).exists()


def test_trust_remote_code_needs_the_flag(proxy: ProxyProcess, layout: dict[str, Path]) -> None:
    remote = str(layout["outside"] / "remote")
    base = {"task": "text-classification", "trust_remote_code": True}
    refused(proxy, "postgres", transform_sql(base | {"model": remote}))
    refused(proxy, "postgres", transform_sql(base | {"model": SENTIMENT, "config": remote}))
    generation = lit({"task": "text-generation", "model": GENERATION})
    for args in (
        {"custom_generate": remote, "trust_remote_code": True},
        {"custom_generate": remote},
    ):
        sql = f"SELECT pgml.transform({generation}::jsonb, {lit(args)}, ARRAY['I love'])"
        refused(proxy, "postgres", sql, "22023")
    trusting = lit({"trust_remote_code": True})
    for name in (remote, SENTIMENT):
        error = refused(proxy, "postgres", f"SELECT pgml.embed({lit(name)}, 'x', {trusting})")
        assert "--trust-remote-code" in str(error)
    assert not (layout["root"] / MARKER).exists()


@pytest.mark.parametrize("name", ["tiny/broken", "tiny/pickled", "tiny/garbage"])
def test_a_model_that_cannot_be_read(
    proxy: ProxyProcess, layout: dict[str, Path], name: str
) -> None:
    error = refused(
        proxy,
        "postgres",
        transform_sql({"task": "text-classification", "model": name}),
        "22023",
    )
    assert str(layout["root"]) not in str(error.diag.message_detail)
    assert not (layout["root"] / MARKER).exists()


# --- tune ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reviews(cluster: PostgresCluster, catalog: None) -> Iterator[str]:
    table = f"rights_{uuid.uuid4().hex[:8]}"
    make_reviews(cluster, table)
    cluster.psql(f"GRANT SELECT ON {table} TO PUBLIC")
    yield table
    cluster.psql(f"DROP TABLE {table}")


def tune_sql(project: str, relation: str, model: str, hyperparams: dict[str, Any]) -> str:
    return (
        f"SELECT * FROM pgml.tune({lit(project)}, 'text-classification', {lit(relation)}, "
        f"'label', {lit(model)}, hyperparams => {lit(hyperparams)}, test_size => 0.25)"
    )


@pytest.mark.parametrize(
    ("hyperparams", "sqlstate"),
    [
        ({"report_to": "nope"}, "22023"),
        ({"report_to": ["none", "nope"]}, "22023"),
        ({"report_to": "wandb"}, "0A000"),
        ({"push_to_hub": True}, "0A000"),
    ],
    ids=["unknown", "in_a_list", "not_installed", "push_to_hub"],
)
def test_tune_checks_training_arguments_before_recording(
    proxy: ProxyProcess,
    reviews: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    hyperparams: dict[str, Any],
    sqlstate: str,
) -> None:
    before = state(direct, layout)
    sql = tune_sql(f"p_{uuid.uuid4().hex[:6]}", reviews, "distilbert-base-uncased", hyperparams)
    refused(proxy, "postgres", sql, sqlstate)
    assert state(direct, layout) == before


@pytest.mark.parametrize("name", ["tiny/broken", "tiny/pickled", "tiny/garbage"])
def test_tune_of_a_model_that_cannot_be_read(
    proxy: ProxyProcess,
    reviews: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    name: str,
) -> None:
    before = state(direct, layout)
    sql = tune_sql(f"p_{uuid.uuid4().hex[:6]}", reviews, name, {})
    error = refused(proxy, "postgres", sql, "22023")
    assert "cannot" in (error.diag.message_primary or "") or "not a" in str(error)
    assert str(layout["root"]) not in str(error.diag.message_detail)
    assert state(direct, layout) == before
    assert not (layout["root"] / MARKER).exists()


def test_tune_of_a_server_model_or_configuration(
    cluster: PostgresCluster,
    proxy: ProxyProcess,
    loader: str,
    reviews: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
) -> None:
    cluster.psql(f"GRANT INSERT ON pgml.projects, pgml.models, pgml.deployments TO {loader}")
    model = str(layout["outside"] / "model")
    config = str(layout["outside"] / "secret.csv")
    before = state(direct, layout)
    project = f"p_{uuid.uuid4().hex[:6]}"
    for name, hyperparams in (
        (model, {}),
        ("tiny/leak", {}),
        ("tiny/adapter", {}),
        (SENTIMENT, {"deepspeed": config}),
        (SENTIMENT, {"accelerator_config": config}),
    ):
        error = refused(proxy, loader, tune_sql(project, reviews, name, hyperparams))
        assert "permission denied to read server file" in (error.diag.message_primary or "")
    assert state(direct, layout) == before
    granted()  # now the model is found, and the missing relation is what stops the tune
    refused(proxy, loader, tune_sql(project, "no_such_relation", model, {}), "42P01")
    assert state(direct, layout) == before


# --- how often the privilege is asked -------------------------------------------------------


def test_asked_once_per_statement_and_only_for_server_paths(
    cluster: PostgresCluster,
    proxy: ProxyProcess,
    loader: str,
    layout: dict[str, Path],
    direct: psycopg.Connection[Any],
    granted: Callable[[], None],
) -> None:
    """PostgreSQL's own statement log of the role's sessions counts the questions."""
    granted()
    cluster.psql(f"ALTER ROLE {loader} SET log_statement = 'all'")
    model = str(layout["outside"] / "model")

    def asked(sql: str) -> int:
        start = len(cluster.log_text())
        assert rows(proxy, loader, sql)
        return cluster.log_text()[start:].count("pg_read_server_files")

    try:
        two_paths = f"VALUES ({lit(model)}), ({lit(model + '/')}), ({lit(model)})"
        assert asked(f"SELECT pgml.embed(m, 'x') IS NOT NULL FROM ({two_paths}) AS t(m)") == 1
        assert asked(transform_sql({"task": "text-classification", "model": model})) == 1
        assert asked(transform_sql({"task": "text-classification", "model": SENTIMENT})) == 0
        assert asked(load_sql("reviews")) == 0
        assert asked(load_sql(str(layout["outside"] / "secret.csv"))) == 1
    finally:
        cluster.psql(f"ALTER ROLE {loader} RESET log_statement")
        direct.execute("DROP TABLE IF EXISTS pgml.reviews, pgml.secret")
