"""pgml.tune, predict, predict_proba and generate when something is wrong: bad arguments,
bad data, a worker killed or cancelled mid-training, a failed call inside a transaction and a
caller without privileges.  Each gives the fitting SQLSTATE with a clear message, deploys
nothing, changes no data, and leaves the session (and the proxy) usable.

Through psql (simple protocol, as users type it) and psycopg 3 (extended protocol)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from tests.conftest import PASSWORDS
from tests.integration._pgml import psql, unique
from tests.integration.conftest import dropped_afterwards
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.tiny_models import ENGLISH

CLASSIFIER = "distilbert-base-uncased"
GENERATOR = "gpt2"
ONE_EPOCH = '{"num_train_epochs": 1}'
LONG_RUN = '{"num_train_epochs": 20, "per_device_train_batch_size": 2}'
LONG_ROWS = 400
TASK_NAMES = ("text-classification", "translation", "summarization", "text-generation")
TWO_CLASSES = "'review ' || g || CASE WHEN g % 2 = 0 THEN ' great fun' ELSE ' dull mess' END, g % 2"
WORKER_MODULE = b"handlers.tuning.worker"
CANCEL_SECONDS = 5.0


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def tune_sql(project: str, relation: str, **overrides: str) -> str:
    """``SELECT * FROM pgml.tune(...)`` with named arguments; overrides are SQL fragments."""
    args = {
        "task": lit("text-classification"),
        "relation_name": lit(relation),
        "y_column_name": lit("label"),
        "model_name": lit(CLASSIFIER),
        "hyperparams": lit(ONE_EPOCH),
        "test_size": "0.25",
    } | overrides
    named = ", ".join(f"{k} => {v}" for k, v in args.items())
    return f"SELECT * FROM pgml.tune({lit(project)}, {named})"


# --- what the catalog and the table say ----------------------------------------------------


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    """The superuser, straight to PostgreSQL: to look at the catalog and the tables."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


def has_catalog(direct: psycopg.Connection[Any]) -> bool:
    row = direct.execute("SELECT to_regclass('pgml.deployed_models') IS NOT NULL").fetchone()
    return bool(row and row[0])


def models_of(direct: psycopg.Connection[Any], project: str) -> list[tuple[int, str, str | None]]:
    """(id, status, error) of the project's models, oldest first."""
    if not has_catalog(direct):
        return []
    return [
        (int(r[0]), r[1], r[2])
        for r in direct.execute(
            "SELECT m.id, m.status, m.error FROM pgml.models AS m "
            "JOIN pgml.projects AS p ON p.id = m.project_id WHERE p.name = %s ORDER BY m.id",
            [project],
        ).fetchall()
    ]


def deployed_rows(direct: psycopg.Connection[Any], project: str) -> list[tuple[Any, ...]]:
    if not has_catalog(direct):
        return []
    return [
        tuple(r)
        for r in direct.execute(
            "SELECT * FROM pgml.deployed_models WHERE name = %s", [project]
        ).fetchall()
    ]


def assert_nothing_deployed(direct: psycopg.Connection[Any], project: str) -> None:
    assert deployed_rows(direct, project) == []
    if has_catalog(direct):
        row = direct.execute(
            "SELECT count(*) FROM pgml.deployments AS d JOIN pgml.projects AS p "
            "ON p.id = d.project_id WHERE p.name = %s",
            [project],
        ).fetchone()
        assert row == (0,)


def table_rows(direct: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]] | None:
    """Every row, in a stable order; None when there is no such table."""
    found = direct.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    if not found or not found[0]:
        return None
    return sorted(
        (tuple(r) for r in direct.execute(f"SELECT * FROM {table}").fetchall()),
        key=repr,
    )


def worker_pids(parent: int) -> list[int]:
    """Training workers (``python -m handlers.tuning.worker``) the proxy process started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and WORKER_MODULE in command:
            found.append(int(entry.name))
    return found


def proxy_pid(proxy: ProxyProcess) -> int:
    assert proxy.process is not None
    return proxy.process.pid


def wait_for_no_workers(proxy: ProxyProcess, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := worker_pids(proxy_pid(proxy))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# --- tables --------------------------------------------------------------------------------


def create_table(
    cluster: PostgresCluster, name: str, columns: str, fill: str | None, count: int = 40
) -> None:
    sql = f"CREATE TABLE {name} {columns};"
    if fill is not None:
        sql += f" INSERT INTO {name} SELECT {fill} FROM generate_series(1, {count}) AS g;"
    cluster.psql(sql)


@pytest.fixture(scope="module")
def module_tables(cluster: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Like ``scratch``, for the tables of the module's shared projects."""
    yield from dropped_afterwards(cluster)


def tune_ok(dsn: str, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture(scope="module")
def classifier(
    tuner: ProxyProcess, cluster: PostgresCluster, module_tables: Callable[[str], str]
) -> str:
    """A deployed text-classification project."""
    table = module_tables("cls")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    project = unique("classifier")
    assert tune_ok(tuner.dsn(), tune_sql(project, table)) == (
        project,
        "text-classification",
        CLASSIFIER,
        True,
    )
    return project


@pytest.fixture(scope="module")
def undeployed(
    tuner: ProxyProcess, cluster: PostgresCluster, module_tables: Callable[[str], str]
) -> str:
    """A text-classification project whose only model was trained but never deployed.

    Its first call is refused: a refusal leaves nothing behind that gets in the way."""
    table = module_tables("undeployed")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    project = unique("undeployed")
    refused = tune_sql(project, table, hyperparams="""'{"learnin_rate": 1}'""")
    assert fail_with_psycopg(tuner.dsn(), refused).sqlstate == "22023"
    sql = tune_sql(project, table, automatic_deploy="false")
    assert tune_ok(tuner.dsn(), sql) == (project, "text-classification", CLASSIFIER, False)
    return project


@pytest.fixture(scope="module")
def generator(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    module_tables: Callable[[str], str],
) -> str:
    """A deployed text-generation project (tiny gpt2)."""
    table = module_tables("lines")
    cluster.psql(f"CREATE TABLE {table} (text text)")
    with direct.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s)", [(s,) for s in ENGLISH[:20]])
    project = unique("generator")
    sql = tune_sql(
        project,
        table,
        task=lit("text-generation"),
        y_column_name=lit("text"),
        model_name=lit(GENERATOR),
    )
    assert tune_ok(tuner.dsn(), sql) == (project, "text-generation", GENERATOR, True)
    return project


# --- running a failing statement through either client -------------------------------------


@dataclass
class Failure:
    sqlstate: str
    message: str
    detail: str = ""
    hint: str = ""
    usable_after: bool = False
    """The same session answered ``SELECT 1`` after the error."""
    notices: list[str] = field(default_factory=list)


_PSQL_ERROR = re.compile(r"^ERROR:  ([0-9A-Z]{5}): (.*)$")
_PSQL_FIELD = re.compile(r"^(DETAIL|HINT):  (.*)$")


def fail_with_psql(dsn: str, sql: str) -> Failure:
    """The statement then ``SELECT 1`` in one psql session (psql goes on after an error)."""
    out = psql(dsn, sql, "SELECT 1 AS still_usable")
    lines = out.stderr.splitlines()
    errors_seen = [m for line in lines if (m := _PSQL_ERROR.match(line))]
    assert len(errors_seen) == 1, out.stderr
    failure = Failure(errors_seen[0].group(1), errors_seen[0].group(2))
    for line in lines:
        if m := _PSQL_FIELD.match(line):
            setattr(failure, m.group(1).lower(), m.group(2))
    assert "Traceback" not in out.stderr
    failure.usable_after = out.stdout.splitlines() == ["still_usable", "1", "(1 row)"]
    return failure


def fail_with_psycopg(dsn: str, sql: str) -> Failure:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(sql)
        error = raised.value
        assert error.sqlstate is not None, error
        failure = Failure(
            error.sqlstate,
            error.diag.message_primary or "",
            error.diag.message_detail or "",
            error.diag.message_hint or "",
            notices=notices,
        )
        assert "Traceback" not in str(error)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        failure.usable_after = conn.execute("SELECT 1").fetchone() == (1,)
    return failure


def assert_no_traceback(failure: Failure) -> None:
    for text in (failure.message, failure.detail, failure.hint):
        assert "Traceback" not in text and 'File "' not in text, failure


CLIENTS = {"psql": fail_with_psql, "psycopg": fail_with_psycopg}


@pytest.fixture(params=sorted(CLIENTS))
def fail(request: pytest.FixtureRequest) -> Callable[[str, str], Failure]:
    return CLIENTS[request.param]


# --- arguments and data: refused before anything is trained -------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    sqlstate: str
    message: tuple[str, ...]
    args: dict[str, str] = field(default_factory=dict)
    """SQL fragments for pgml.tune's named arguments; ``{table}`` and ``{models}`` filled in."""
    columns: str | None = "(text text, label int)"
    """The table's columns; None: no table at all."""
    fill: str | None = TWO_CLASSES
    detail: tuple[str, ...] = ()
    hint: tuple[str, ...] = ()
    no_model: bool = False
    """No row in pgml.models at all: refused before a model is recorded."""

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


CASES = [
    Case(
        "unknown-task",
        "22023",
        ('unknown task "regression-ish"',),
        {"task": "'regression-ish'"},
        hint=TASK_NAMES,
        no_model=True,
    ),
    Case(
        "unknown-model",
        "42704",
        ("nobody/nothing", "not found"),
        {"model_name": "'nobody/nothing'"},
        detail=(
            "models folder (nobody/nothing/)",
            "Hugging Face cache",
            "Hugging Face hub (offline)",
        ),
        hint=("--models-dir",),
    ),
    Case(
        "missing-relation",
        "42P01",
        ('relation "{table}_missing" does not exist',),
        {"relation_name": "'{table}_missing'"},
    ),
    Case(
        "missing-label-column",
        "42703",
        ('column "labl" does not exist', "{table}"),
        {"y_column_name": "'labl'"},
        hint=("Columns: text, label",),
    ),
    Case(
        "two-input-columns",
        "22023",
        ("exactly one input column", "has 2"),
        columns="(text text, text2 text, label int)",
        fill="'first ' || g, 'second ' || g, g % 2",
        detail=("text, text2, label",),
        hint=("view",),
    ),
    Case(
        "integer-input-column",
        "22023",
        ('input column "n" is integer, not text',),
        columns="(n int, label int)",
        fill="g, g % 2",
        hint=("view", "n::text"),
    ),
    Case("empty-relation", "22023", ("no rows",), fill=None),
    Case("test-size-zero", "22023", ("test_size",), {"test_size": "0"}),
    Case("test-size-negative", "22023", ("test_size",), {"test_size": "-0.5"}),
    Case(
        "test-size-too-large",
        "22023",
        ("test_size 1000", "the relation has 40"),
        {"test_size": "1000"},
        hint=("at least one row",),
    ),
    Case("test-size-whole-table", "22023", ("test_size 40", "has 40"), {"test_size": "40"}),
    Case(
        "test-size-rounds-to-no-rows",
        "22023",
        ("leaves 0 test",),
        {"test_size": "0.001"},
    ),
    Case(
        "unknown-hyperparameter",
        "22023",
        ('unknown hyperparameter "learnin_rate"',),
        {"hyperparams": """'{"learnin_rate": 1}'"""},
        detail=("TrainingArguments",),
        no_model=True,
    ),
    Case(
        "hyperparams-not-json",
        "22P02",
        ("invalid input syntax for type json",),
        {"hyperparams": "'{not json'"},
        no_model=True,
    ),
    Case(
        "hyperparams-not-an-object",
        "22023",
        ("JSON object",),
        {"hyperparams": "'[1, 2]'"},
        no_model=True,
    ),
    Case(
        "bad-hyperparameter-value",
        "22023",
        ("learning_rate",),
        {"hyperparams": """'{"learning_rate": "fast"}'"""},
        no_model=True,
    ),
    Case(
        "bad-hyperparameter-choice",
        "22023",
        ("bad hyperparameters", "nope", "SchedulerType"),
        {"hyperparams": """'{"lr_scheduler_type": "nope"}'"""},
        no_model=True,
    ),
    Case(
        "hyperparameter-chosen-by-the-proxy",
        "22023",
        ("output_dir",),
        {"hyperparams": """'{"output_dir": "/tmp/elsewhere"}'"""},
        no_model=True,
    ),
    Case(
        "unknown-lora-config-key",
        "22023",
        ('unknown lora_config key "rank"',),
        {"hyperparams": """'{"lora_config": {"rank": 8}}'"""},
        detail=("LoraConfig", "lora_alpha", "target_modules"),
        no_model=True,
    ),
    Case(
        "bad-lora-config-value",
        "22023",
        ('lora_config key "r" must be an integer, not "eight"',),
        {"hyperparams": """'{"lora_config": {"r": "eight"}}'"""},
        no_model=True,
    ),
    Case(
        "lora-config-out-of-range",
        "22023",
        ("lora_dropout must be at least 0 and below 1",),
        {"hyperparams": """'{"lora_config": {"lora_dropout": 1.5}}'"""},
        no_model=True,
    ),
    Case(
        "lora-target-module-not-in-the-model",
        "22023",
        ('lora_config target_modules "no_such_layer" is not a module',),
        {"hyperparams": """'{"lora_config": {"target_modules": ["no_such_layer"]}}'"""},
        hint=("q_lin", "v_lin"),
        no_model=True,
    ),
    Case(
        "hyperparameter-the-trainer-refuses",
        "22023",
        ("training failed: TypeError: ", "unexpected keyword argument 'nope'"),
        {
            "hyperparams": """'{"num_train_epochs": 1, "lr_scheduler_type": """
            """"cosine_with_restarts", "lr_scheduler_kwargs": {"nope": 1}}'"""
        },
    ),
    Case(
        "lora-task-type-chosen-by-the-proxy",
        "22023",
        ('lora_config key "task_type" is chosen by pgml-proxy',),
        {"hyperparams": """'{"lora_config": {"task_type": "CAUSAL_LM"}}'"""},
        no_model=True,
    ),
    Case(
        "lora-config-not-an-object",
        "22023",
        ("lora_config must be a JSON object",),
        {"hyperparams": """'{"lora_config": [8, 16]}'"""},
        no_model=True,
    ),
    Case(
        "load-in-4bit-on-a-cpu",
        "0A000",
        ("load_in_4bit needs a CUDA GPU", "trains on cpu"),
        {"hyperparams": """'{"load_in_4bit": true, "lora_config": {}}'"""},
        hint=("Leave out load_in_4bit",),
        no_model=True,
    ),
    Case(
        "load-in-8bit-on-a-cpu",
        "0A000",
        ("load_in_8bit needs a CUDA GPU",),
        {"hyperparams": """'{"load_in_8bit": true, "lora_config": {"r": 4}}'"""},
        no_model=True,
    ),
    Case(
        "load-in-4bit-without-lora-config",
        "22023",
        ("load_in_4bit needs lora_config",),
        {"hyperparams": """'{"load_in_4bit": true}'"""},
        hint=("lora_config",),
        no_model=True,
    ),
    Case(
        "unknown-test-sampling",
        "22023",
        ('unknown test_sampling "sideways"',),
        {"test_sampling": "'sideways'"},
        hint=("random", "first", "last", "stratified"),
    ),
    Case(
        "null-labels",
        "22004",
        ('column "label" has 4 NULL values',),
        fill="'text ' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE g % 2 END",
        hint=("IS NOT NULL",),
    ),
    Case(
        "null-inputs",
        "22004",
        ('column "text" has 1 NULL value',),
        fill="CASE WHEN g = 7 THEN NULL ELSE 'text ' || g END, g % 2",
    ),
    Case("single-class", "22023", ("single class",), fill="'text ' || g, 1", hint=("two",)),
    Case(
        "text-generation-on-a-number",
        "22023",
        ('column "label" is integer, not text',),
        {"task": "'text-generation'", "model_name": f"'{GENERATOR}'"},
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_tune_is_refused(
    case: Case,
    fail: Callable[[str, str], Failure],
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    models_dir: Path,
    scratch: Callable[[str], str],
) -> None:
    table = scratch("tune_input")
    if case.columns is not None:
        create_table(cluster, table, case.columns, case.fill)
    before = table_rows(direct, table)
    project = unique("refused")

    def filled(text: str) -> str:
        return text.replace("{table}", table).replace("{models}", str(models_dir))

    args = {k: filled(v) for k, v in case.args.items()}
    failure = fail(tuner.dsn(), tune_sql(project, table, **args))

    assert failure.sqlstate == case.sqlstate, failure
    for part in case.message:
        assert filled(part) in failure.message, failure
    for part in case.detail:
        assert filled(part) in failure.detail, failure
    for part in case.hint:
        assert filled(part) in failure.hint, failure
    assert_no_traceback(failure)
    assert failure.usable_after
    assert_nothing_deployed(direct, project)
    models = models_of(direct, project)
    assert [m for m in models if m[1] in ("in_progress", "successful")] == []
    if case.no_model:
        assert models == []
    assert table_rows(direct, table) == before
    assert worker_pids(proxy_pid(tuner)) == []


def test_bound_parameters_give_the_same_errors(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
) -> None:
    """Arguments bound as parameters in the extended protocol are checked the same way."""
    table = scratch("bound")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    project = unique("bound")
    sql = (
        "SELECT * FROM pgml.tune(%s, task => %s, relation_name => %s, y_column_name => %s, "
        "model_name => %s, hyperparams => %s::jsonb, test_size => %s)"
    )
    base = [project, "text-classification", table, "label", CLASSIFIER, ONE_EPOCH, 0.25]
    wrong = [
        (1, "regression-ish", "22023", "regression-ish"),
        (4, "nobody/nothing", "42704", "nobody/nothing"),
        (5, '{"learnin_rate": 1}', "22023", "learnin_rate"),
        (6, 1000, "22023", "test_size"),
    ]
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        for index, value, sqlstate, part in wrong:
            params = list(base)
            params[index] = value
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(sql, params)
            assert raised.value.sqlstate == sqlstate, raised.value
            assert part in (raised.value.diag.message_primary or "")
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_nothing_deployed(direct, project)
    assert models_of(direct, project) == []


# --- serving -----------------------------------------------------------------------------


def test_predict_on_an_unknown_project(
    fail: Callable[[str, str], Failure], tuner: ProxyProcess
) -> None:
    name = unique("nobody")
    failure = fail(tuner.dsn(), f"SELECT pgml.predict({lit(name)}, 'some text')")
    assert failure.sqlstate == "42704"
    assert f'project "{name}" does not exist' in failure.message
    assert "pgml.projects" in failure.hint
    assert failure.usable_after


@pytest.mark.parametrize("function", ["predict", "predict_proba"])
def test_a_project_with_no_deployed_model(
    function: str,
    fail: Callable[[str, str], Failure],
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    undeployed: str,
) -> None:
    assert [m[1] for m in models_of(direct, undeployed)] == ["successful"]
    assert_nothing_deployed(direct, undeployed)
    failure = fail(tuner.dsn(), f"SELECT pgml.{function}({lit(undeployed)}, 'some text')")
    assert failure.sqlstate == "55000"
    assert "has no deployed model" in failure.message
    assert "pgml.deploy" in failure.hint
    assert failure.usable_after


def test_predict_proba_on_a_text_generation_project(
    fail: Callable[[str, str], Failure], tuner: ProxyProcess, generator: str
) -> None:
    failure = fail(tuner.dsn(), f"SELECT pgml.predict_proba({lit(generator)}, 'Once upon')")
    assert failure.sqlstate == "0A000"
    assert "predict_proba" in failure.message and "text-generation" in failure.message
    assert "pgml.generate" in failure.hint
    assert failure.usable_after


def test_generate_on_a_classification_project(
    fail: Callable[[str, str], Failure], tuner: ProxyProcess, classifier: str
) -> None:
    failure = fail(tuner.dsn(), f"SELECT pgml.generate({lit(classifier)}, 'some text')")
    assert failure.sqlstate == "0A000"
    assert "pgml.generate" in failure.message and "text-classification" in failure.message
    assert "pgml.predict" in failure.hint
    assert failure.usable_after


def test_generate_with_an_unknown_option(
    fail: Callable[[str, str], Failure], tuner: ProxyProcess, generator: str
) -> None:
    sql = f"""SELECT pgml.generate({lit(generator)}, 'Once upon', '{{"max_new_tokenz": 3}}')"""
    failure = fail(tuner.dsn(), sql)
    assert failure.sqlstate == "22023"
    assert '"max_new_tokenz"' in failure.message
    assert "max_new_tokens" in failure.hint
    assert failure.usable_after


def test_the_serving_projects_work(tuner: ProxyProcess, classifier: str, generator: str) -> None:
    """The projects the serving errors use are good ones: the errors are about the calls."""
    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        label, probabilities, text = conn.execute(
            f"SELECT pgml.predict({lit(classifier)}, 'great fun'), "
            f"pgml.predict_proba({lit(classifier)}, 'great fun'), "
            f"""pgml.generate({lit(generator)}, 'Once upon', '{{"max_new_tokens": 3}}')"""
        ).fetchone()  # type: ignore[misc]
    assert label in (0.0, 1.0)
    assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(text, str) and text.startswith("Once upon")


# --- a worker killed or cancelled mid-training ---------------------------------------------


class Background:
    """A statement run on its own connection in a thread; ``error`` is what it raised."""

    def __init__(self, dsn: str, sql: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.notices: list[str] = []
        self.conn.add_notice_handler(lambda n: self.notices.append(n.message_primary or ""))
        self.sql = sql
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.conn.execute(self.sql).fetchall()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the statement did not finish"

    def close(self) -> None:
        if self.thread.is_alive():
            self.conn.cancel_safe()
            self.thread.join(30)
        self.conn.close()


def wait_until_training(
    direct: psycopg.Connection[Any], project: str, running: Callable[[], bool]
) -> int:
    """The model's id once it is ``in_progress`` and the training loop has logged."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert running(), "the tune ended before training had started"
        models = models_of(direct, project)
        if models and models[-1][1] == "in_progress":
            row = direct.execute(
                "SELECT count(*) FROM pgml.logs WHERE model_id = %s AND logs ? 'max_steps'",
                [models[-1][0]],
            ).fetchone()
            if row and row[0] > 0:
                return models[-1][0]
        time.sleep(0.1)
    raise AssertionError("training did not start in time")


@pytest.fixture
def long_table(cluster: PostgresCluster, scratch: Callable[[str], str]) -> str:
    table = scratch("long")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    return table


def long_tune(project: str, table: str) -> str:
    return tune_sql(project, table, hyperparams=lit(LONG_RUN))


def test_a_killed_worker_fails_the_tune(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    long_table: str,
    classifier: str,
) -> None:
    project = unique("killed")
    before = table_rows(direct, long_table)
    call = Background(tuner.dsn(), long_tune(project, long_table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        workers = worker_pids(proxy_pid(tuner))
        assert len(workers) == 1, workers
        signal_sent = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        call.join(60)
    finally:
        call.close()
    assert isinstance(call.error, psycopg.Error), call.error
    assert call.error.sqlstate == "58000", call.error
    message = call.error.diag.message_primary or ""
    assert "killed by signal 9" in message and "SIGKILL" in message, message
    assert 'File "' not in (call.error.diag.message_detail or "")
    assert call.finished_at - signal_sent < 10
    assert any("training" in n for n in call.notices)  # it did report progress before

    [(found_id, status, error)] = models_of(direct, project)
    assert (found_id, status) == (model_id, "failed")
    assert error is not None and "signal 9" in error, error
    assert_nothing_deployed(direct, project)
    assert table_rows(direct, long_table) == before
    assert wait_for_no_workers(tuner) == []

    with psycopg.connect(tuner.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute(f"SELECT pgml.predict({lit(classifier)}, 'great fun')").fetchone()
        assert row is not None and row[0] in (0.0, 1.0)
    assert tuner.process is not None and tuner.process.poll() is None


def test_a_cancel_stops_training_within_seconds(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    long_table: str,
) -> None:
    project = unique("cancelled")
    before = table_rows(direct, long_table)
    call = Background(tuner.dsn(), long_tune(project, long_table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        assert len(worker_pids(proxy_pid(tuner))) == 1
        cancelled_at = time.monotonic()
        call.conn.cancel_safe()
        call.join(60)
        took = call.finished_at - cancelled_at
        assert isinstance(call.error, errors.QueryCanceled), call.error
        assert call.error.sqlstate == "57014"
        assert "canceling statement due to user request" in str(call.error)
        assert took < CANCEL_SECONDS, f"the cancel took {took:.1f} s"
        assert call.conn.info.transaction_status == TransactionStatus.IDLE
        assert call.conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        call.close()
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled by the client")]
    assert_nothing_deployed(direct, project)
    assert table_rows(direct, long_table) == before
    assert wait_for_no_workers(tuner, timeout=2) == []


def test_psql_ctrl_c_stops_training(
    tuner: ProxyProcess,
    direct: psycopg.Connection[Any],
    long_table: str,
) -> None:
    """What a psql user does: Ctrl-C (SIGINT to psql) sends a cancel request."""
    project = unique("ctrl_c")
    process = subprocess.Popen(
        [
            str(BIN / "psql"),
            "-X",
            "-v",
            "VERBOSITY=verbose",
            tuner.dsn(),
            "-c",
            long_tune(project, long_table),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_training(direct, project, lambda: process.poll() is None)
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - interrupted_at
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, stderr
    assert "ERROR:  57014: canceling statement due to user request" in stderr
    assert took < CANCEL_SECONDS, f"the cancel took {took:.1f} s"
    assert [m[1] for m in models_of(direct, project)] == ["cancelled"]
    assert_nothing_deployed(direct, project)
    assert wait_for_no_workers(tuner, timeout=2) == []


# --- transactions and privileges -----------------------------------------------------------


def test_a_failed_tune_aborts_the_transaction(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
) -> None:
    """The relation is read in the caller's transaction: its own uncommitted rows count."""
    table = scratch("in_tx")
    project = unique("in_tx")
    with psycopg.connect(tuner.dsn()) as conn:  # autocommit off: psycopg opens a transaction
        conn.execute(f"CREATE TABLE {table} (text text, label int)")
        conn.execute(
            f"INSERT INTO {table} SELECT 'text ' || g, CASE WHEN g % 10 = 0 THEN NULL "
            "ELSE g % 2 END FROM generate_series(1, 40) AS g"
        )
        assert table_rows(direct, table) is None  # not committed: invisible to others
        with pytest.raises(errors.NullValueNotAllowed) as raised:
            conn.execute(tune_sql(project, table))
        assert raised.value.sqlstate == "22004"
        assert 'column "label" has 4 NULL values' in str(raised.value)
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as aborted:
            conn.execute("SELECT 1")
        assert aborted.value.sqlstate == "25P02"
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute(tune_sql(project, table))
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,)
        conn.rollback()
    assert table_rows(direct, table) is None
    assert models_of(direct, project) == []
    assert_nothing_deployed(direct, project)


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        ({"task": "'regression-ish'"}, "22023"),
        ({"model_name": "'nobody/nothing'"}, "42704"),
        ({"y_column_name": "'labl'"}, "42703"),
        ({"test_size": "1000"}, "22023"),
    ],
    ids=["task", "model", "column", "test-size"],
)
def test_any_failed_tune_aborts_the_transaction(
    args: dict[str, str],
    sqlstate: str,
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
) -> None:
    table = scratch("tx")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    project = unique("tx")
    with psycopg.connect(tuner.dsn()) as conn:
        conn.execute(f"INSERT INTO {table} VALUES ('uncommitted', 0)")
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(tune_sql(project, table, **args))
        assert raised.value.sqlstate == sqlstate, raised.value
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (40,)
        conn.rollback()
    assert_nothing_deployed(direct, project)


def test_a_failed_tune_in_a_psql_transaction(
    tuner: ProxyProcess, cluster: PostgresCluster, scratch: Callable[[str], str]
) -> None:
    table = scratch("psql_tx")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    project = unique("psql_tx")
    out = psql(
        tuner.dsn(),
        "BEGIN",
        tune_sql(project, table, test_size="0"),
        "SELECT 1",
        "ROLLBACK",
        "SELECT 2 AS after_rollback",
    )
    assert "ERROR:  22023:" in out.stderr
    assert "ERROR:  25P02: current transaction is aborted" in out.stderr
    assert out.stdout.splitlines()[-3:] == ["after_rollback", "2", "(1 row)"]


def test_tune_needs_select_on_the_relation(
    tuner: ProxyProcess,
    cluster: PostgresCluster,
    direct: psycopg.Connection[Any],
    scratch: Callable[[str], str],
) -> None:
    """The relation is read in the caller's own session, with the caller's privileges
    (the caller may tune: see test_access.py for the catalog's own privileges)."""
    table = scratch("private")
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES)
    cluster.psql(f"REVOKE ALL ON {table} FROM PUBLIC")
    before = table_rows(direct, table)
    project = unique("private")
    dsn = tuner.dsn("plain_user")
    tune_ok(tuner.dsn(), "SELECT pgml.version()")  # any pgml call creates the catalog
    catalog = "pgml.projects, pgml.models, pgml.deployments"
    cluster.psql(f"GRANT INSERT ON {catalog} TO plain_user")
    try:
        refused_by_the_relation(cluster, dsn, table, project)
    finally:
        cluster.psql(f"REVOKE INSERT ON {catalog} FROM plain_user")
    assert models_of(direct, project) == []
    assert_nothing_deployed(direct, project)
    assert table_rows(direct, table) == before


def refused_by_the_relation(cluster: PostgresCluster, dsn: str, table: str, project: str) -> None:
    with psycopg.connect(dsn, password=PASSWORDS["plain_user"], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("plain_user",)
        with pytest.raises(errors.InsufficientPrivilege) as raised:
            conn.execute(tune_sql(project, table))
        assert raised.value.sqlstate == "42501"
        assert f"permission denied for table {table}" in str(raised.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)

        # with SELECT granted, the same call gets as far as the data (a later, cheap error)
        cluster.psql(f"GRANT SELECT ON {table} TO plain_user")
        with pytest.raises(psycopg.Error) as later:
            conn.execute(tune_sql(project, table, test_size="1000"))
        assert later.value.sqlstate == "22023", later.value
        assert "has 40" in str(later.value)
