"""PostgresML's own test script run through psql against the proxy, statement by statement.

With ``POSTGRESML_REPO`` naming a copy of postgresml/postgresml (a checkout, or a git
directory read at ``POSTGRESML_REV``, default ``HEAD``), ``pgml-extension/tests/test.sql``
and the example files it includes are exported from it into a temporary folder and run;
every statement that needs neither the internet nor a GPU must succeed, within 10
minutes. Nothing of theirs
is kept in this repository: without a copy (as in CI), the test runs a script of its own
in the same shape, one statement or more for every function and algorithm, and every
statement of it must succeed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handlers.classic.algorithms import ESTIMATORS, LINEAR_STANDS_FOR
from tests.integration._pgml import unique
from tests.support.pgserver import BIN, PostgresCluster
from tests.support.proxyproc import ProxyProcess

pytestmark = pytest.mark.timeout(900)

TARGET = 210
"""Statements of PostgresML's script at 2d2352d (220 SQL statements; psql's meta-commands
are not counted) that succeed here: all but ``OUTSIDE``'s, and one of ``OUTSIDE``'s
(``pgml.embed`` of all-MiniLM-L6-v2, installed with the test tools)."""
OUTSIDE = re.compile(r"jdxcosta/diamonds|Diamond prices|pgml\.embed\(")
"""Statements that need the internet (a hub dataset, the models that ``pgml.embed``
downloads) or a GPU: counted when they succeed, not required."""
SECONDS = 600
"""The whole of PostgresML's script runs within 10 minutes on a 2-core machine."""


@dataclass
class Outcome:
    """One SQL statement of the script and how it ended (SQLSTATE and message if not)."""

    sql: str
    sqlstate: str = ""
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return not self.sqlstate


# --- the script: psql's own units, includes expanded ----------------------------------

_TOKEN = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$\w*\$).*?\1|;|[^-/'\"$;]+|.",
    re.DOTALL,
)


def units(text: str, folder: Path) -> list[str]:
    """The script's meta-commands (a backslash line) and SQL statements, in order, with
    ``\\i`` files read from ``folder`` (where psql is started) and expanded in place."""
    found: list[str] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        if not pending.strip() and line.lstrip().startswith("\\"):
            command = line.strip()
            if command.startswith(("\\i ", "\\include ")):
                path = folder / command.split(maxsplit=1)[1]
                found += units(path.read_text(), folder)
            else:
                found.append(command)
            pending = ""
            continue
        pending += line
        ended = [m.group(0) for m in _TOKEN.finditer(pending)]
        if ";" in ended and ended[-1].strip() in (";", "") and _ends(ended):
            found.append(_without_comments(pending))
            pending = ""
    if _without_comments(pending):
        found.append(_without_comments(pending))
    return [u for u in found if u]


def _ends(tokens: list[str]) -> bool:
    """Whether the last token that is not blank or a comment is ``;``."""
    for token in reversed(tokens):
        if token.strip() and not token.startswith(("--", "/*")):
            return token == ";"
    return False


def _without_comments(sql: str) -> str:
    kept = [t for t in (m.group(0) for m in _TOKEN.finditer(sql)) if not t.startswith("--")]
    return "".join(kept).strip()


def run_script(dsn: str, items: list[str], folder: Path) -> list[Outcome]:
    """Every SQL statement through one psql session, each followed by a marker line that
    says how it ended; ``ON_ERROR_STOP`` is left off so that the script goes on."""
    statements = [Outcome(u) for u in items if not u.startswith("\\")]
    lines = []
    index = 0
    for item in items:
        if item.startswith("\\"):
            if not item.startswith("\\set ON_ERROR_STOP"):
                lines.append(item)
            continue
        lines += [
            item,
            f"\\if :ERROR\n\\echo '@@' {index} :SQLSTATE :LAST_ERROR_MESSAGE\n"
            f"\\else\n\\echo '@@' {index}\n\\endif",
        ]
        index += 1
    script = folder / "run.sql"
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [str(BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=0", "-f", str(script), dsn],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    seen = set()
    for line in out.stdout.splitlines():
        if line.startswith("@@ "):
            number, *rest = line[3:].split(" ", 2)
            seen.add(int(number))
            if rest:
                statements[int(number)].sqlstate = rest[0]
                statements[int(number)].message = rest[1] if len(rest) > 1 else ""
    assert seen == set(range(len(statements))), out.stderr[-4000:]
    return statements


def report(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if not o.succeeded]
    lines = [f"{len(outcomes) - len(failed)} of {len(outcomes)} statements succeeded"]
    lines += [f"  {o.sqlstate} {o.message}\n    {' '.join(o.sql.split())[:200]}" for o in failed]
    return "\n".join(lines)


# --- the script of our own -------------------------------------------------------------

DATASETS = ("breast_cancer", "diabetes", "digits", "iris", "linnerud", "wine")
QUICK = {
    "ada_boost": {"n_estimators": 5},
    "bagging": {"n_estimators": 5},
    "extra_trees": {"n_estimators": 5},
    "gradient_boosting_trees": {"n_estimators": 5},
    "random_forest": {"n_estimators": 5},
    "hist_gradient_boosting": {"max_iter": 5},
    "xgboost": {"n_estimators": 5},
    "xgboost_random_forest": {"n_estimators": 5},
    "lightgbm": {"n_estimators": 5},
    "catboost": {"n_estimators": 5},
    "theil_sen": {"max_iter": 10, "max_subpopulation": 100},
    "quantile": {"solver": "highs"},
    "svm": {"max_iter": 1000},
    "kmeans": {"n_clusters": 3},
    "mini_batch_kmeans": {"n_clusters": 3},
    "birch": {"n_clusters": 3},
    "pca": {"n_components": 3},
}
"""Hyperparameters that keep the slower algorithms quick (the others take none)."""
IRIS = "ARRAY[sepal_length, sepal_width, petal_length, petal_width]"
DIABETES = "ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]"
NORMALIZE = ("normalize_l1", "normalize_l2", "normalize_max")
VECTORS = "ARRAY[1.5, -2.0, 0.5, 4.0]::{kind}[]"


def _installed(task: str) -> list[str]:
    """The task's algorithms whose library is installed here, the default (what
    ``linear`` stands for) first."""
    import importlib.util

    default = LINEAR_STANDS_FOR.get(task, "linear")
    names = [
        name
        for name, path in ESTIMATORS[task].items()
        if importlib.util.find_spec(path.split(".")[0]) is not None
    ]
    return sorted(names, key=lambda n: n != default)


def _hyperparams(algorithm: str) -> str:
    found = QUICK.get(algorithm)
    return f", hyperparams => '{json.dumps(found)}'" if found else ""


def _project(
    name: str, task: str, relation: str, label: str | None, predictions: list[str]
) -> list[str]:
    """Train every installed algorithm of ``task`` into one project, predict, deploy by
    every strategy, read the catalog's views."""
    given = f"'{task}', '{relation}'" + (f", '{label}'" if label else "")
    algorithms = _installed(task)
    lines = [f"SELECT * FROM pgml.train('{name}', {given});", *predictions]
    lines += [
        f"SELECT * FROM pgml.train('{name}', algorithm => '{a}'{_hyperparams(a)});"
        for a in algorithms
        if a != "linear"
    ]
    lines += [
        "SELECT t.* FROM pgml.trained_models AS t JOIN pgml.models AS m ON m.id = t.id "
        f"WHERE t.name = '{name}' ORDER BY m.metrics::text LIMIT 5;",
        f"SELECT * FROM pgml.deploy('{name}', 'most_recent', '{algorithms[-1]}');",
        "SELECT * FROM pgml.deployed_models ORDER BY deployed_at DESC LIMIT 5;",
    ]
    lines += [
        f"SELECT * FROM pgml.deploy('{name}', '{strategy}');"
        for strategy in ("best_score", "most_recent", "rollback")
    ]
    lines.append(f"SELECT * FROM pgml.deploy('{name}', 'best_score', '{algorithms[0]}');")
    return [*lines, *predictions]


def own_script() -> str:
    """Statements in the shape of PostgresML's script, one or more for every function and
    every algorithm installed here."""
    lines = [
        "\\set ON_ERROR_STOP true",
        "DROP EXTENSION IF EXISTS pgml CASCADE;",
        "DROP SCHEMA IF EXISTS pgml CASCADE;",
        "CREATE EXTENSION pgml;",
        *(f"SELECT pgml.load_dataset('{name}');" for name in DATASETS),
        "SELECT * FROM pgml.wine LIMIT 3;",
        "CREATE VIEW iris_mixed AS SELECT * FROM pgml.iris ORDER BY md5(iris::text);",
    ]
    lines += _project(
        "own regression",
        "regression",
        "pgml.diabetes",
        "target",
        [
            f"SELECT target, pgml.predict('own regression', {DIABETES}) FROM pgml.diabetes "
            "LIMIT 5;",
            "SELECT target, pgml.predict('own regression', d) FROM pgml.diabetes AS d LIMIT 5;",
        ],
    )
    lines += [
        "SELECT pgml.train('own regression', algorithm => 'ridge', search => 'grid', "
        """search_params => '{"alpha": [0.1, 1.0], "fit_intercept": [true, false]}');""",
        "SELECT pgml.train('own regression', algorithm => 'elastic_net', search => 'random', "
        """search_params => '{"alpha": [0.1, 0.5, 1.0]}', search_args => '{"n_iter": 2}');""",
        f"SELECT * FROM pgml.predict_batch('own regression', ARRAY[{', '.join(['0.01'] * 20)}]);",
    ]
    lines += _project(
        "own classification",
        "classification",
        "iris_mixed",
        "target",
        [
            f"SELECT target, pgml.predict('own classification', {IRIS}) FROM iris_mixed LIMIT 5;",
            f"SELECT target, pgml.predict_proba('own classification', {IRIS}) FROM iris_mixed "
            "LIMIT 5;",
        ],
    )
    lines += [
        "SELECT * FROM pgml.train('own binary', 'classification', 'pgml.breast_cancer', "
        "'malignant', 'random_forest', '{\"n_estimators\": 5}');",
        "SELECT malignant, pgml.predict('own binary', b) FROM pgml.breast_cancer AS b LIMIT 5;",
        "SELECT * FROM pgml.train('own digits', 'classification', 'pgml.digits', 'target', "
        """'xgboost', runtime => 'rust', hyperparams => '{"n_estimators": 5}');""",
        "SELECT target, pgml.predict('own digits', image) FROM pgml.digits LIMIT 5;",
        "SELECT target, pgml.predict_proba('own digits', image) FROM pgml.digits LIMIT 5;",
        "CREATE VIEW digit_images AS SELECT image FROM pgml.digits ORDER BY random() LIMIT 300;",
    ]
    lines += _project(
        "own clustering",
        "clustering",
        "digit_images",
        None,
        ["SELECT target, pgml.predict('own clustering', image) FROM pgml.digits LIMIT 5;"],
    )
    lines += _project(
        "own decomposition",
        "decomposition",
        "digit_images",
        None,
        ["SELECT target, pgml.decompose('own decomposition', image) FROM pgml.digits LIMIT 5;"],
    )
    lines += [
        "SELECT * FROM pgml.train_joint('own joint', 'regression', 'pgml.linnerud', "
        "ARRAY['weight', 'waist', 'pulse']);",
        *(
            f"SELECT * FROM pgml.train_joint('own joint', algorithm => '{a}'{_hyperparams(a)});"
            for a in ("lasso", "bayesian_ridge", "random_forest", "xgboost")
            if a in _installed("regression")
        ),
        "SELECT pgml.predict_joint('own joint', ARRAY[chins, situps, jumps]) FROM pgml.linnerud "
        "LIMIT 5;",
        "CREATE TABLE flowers AS SELECT sepal_length, sepal_width, petal_length, petal_width, "
        "(ARRAY['setosa', 'versicolor', 'virginica'])[target + 1] AS species, "
        "CASE WHEN target = 1 THEN NULL ELSE petal_width END AS gappy FROM pgml.iris;",
        "SELECT * FROM pgml.train('own preprocessing', 'regression', 'flowers', 'sepal_length', "
        """'lightgbm', preprocess => '{"species": {"encode": "target", "scale": "standard"}, """
        """"gappy": {"impute": "mean", "scale": "min_max"}, """
        """"petal_length": {"scale": "robust"}}', """
        """hyperparams => '{"n_estimators": 5}');""",
        "SELECT * FROM pgml.train('own preprocessing', algorithm => 'ridge', preprocess => "
        """'{"species": {"encode": "one_hot"}, "gappy": {"impute": "median"}, """
        """"petal_width": {"scale": "max_abs"}}');""",
        "SELECT pgml.predict('own preprocessing', (sepal_width, petal_length, petal_width, "
        "species, gappy)) FROM flowers WHERE gappy IS NOT NULL LIMIT 5;",
    ]
    for kind in ("real", "double precision"):
        vector = VECTORS.format(kind=kind)
        lines += [
            *(f"SELECT pgml.{f}({vector}, 2);" for f in ("add", "subtract", "multiply", "divide")),
            *(
                f"SELECT pgml.{f}({vector}, {vector});"
                for f in ("add", "subtract", "multiply", "divide")
            ),
            *(
                f"SELECT pgml.{f}({vector});"
                for f in ("norm_l0", "norm_l1", "norm_l2", "norm_max", *NORMALIZE)
            ),
            *(
                f"SELECT pgml.{f}({vector}, {vector});"
                for f in ("distance_l1", "distance_l2", "dot_product", "cosine_similarity")
            ),
            f"SELECT pgml.sum(v), pgml.min(v), pgml.max(v), pgml.min_abs(v), pgml.max_abs(v) "
            f"FROM (VALUES ({vector}), (NULL), (pgml.multiply({vector}, -3))) AS t (v);",
        ]
    lines += [
        *(
            f"SELECT * FROM pgml.chunk('{s}', 'One line.\n\nAnother line, a # heading "
            """and more.', '{"chunk_size": 12, "chunk_overlap": 2}');"""
            for s in ("character", "recursive_character", "markdown", "latex", "python")
        ),
        "SELECT pgml.embed('sentence-transformers/all-MiniLM-L6-v2', 'hi mom');",
    ]
    return "\n".join(lines) + "\n"


# --- where the script comes from --------------------------------------------------------


def export_postgresml(source: Path, into: Path) -> Path:
    """PostgresML's ``pgml-extension`` tests and examples copied from ``source`` into
    ``into``; returns the folder psql starts in (``tests/test.sql`` includes
    ``examples/...`` from there)."""
    wanted = ["pgml-extension/tests", "pgml-extension/examples"]
    if (source / "pgml-extension").is_dir():
        for part in wanted:
            subprocess.run(["cp", "-r", str(source / part), str(into)], check=True)
    else:
        revision = os.environ.get("POSTGRESML_REV", "HEAD")
        archive = subprocess.run(
            ["git", f"--git-dir={source}", "archive", revision, *wanted],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        for part in wanted:
            (into / part).rename(into / part.split("/")[1])
    return into


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = unique("postgresml")
    cluster.psql(f"CREATE DATABASE {name}")
    yield name
    cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.skipif(not os.environ.get("POSTGRESML_REPO"), reason="POSTGRESML_REPO not set")
def test_postgresml_test_script(proxy: ProxyProcess, database: str, tmp_path: Path) -> None:
    folder = export_postgresml(Path(os.environ["POSTGRESML_REPO"]), tmp_path)
    items = units((folder / "tests" / "test.sql").read_text(), folder)
    began = time.monotonic()
    outcomes = run_script(proxy.dsn(database=database), items, folder)
    took = time.monotonic() - began
    print(report(outcomes), f"\nin {took:.0f} s")
    required = [o for o in outcomes if not OUTSIDE.search(o.sql)]
    assert all(o.succeeded for o in required), report(outcomes)
    assert sum(o.succeeded for o in outcomes) >= TARGET, report(outcomes)
    assert took < SECONDS


def test_own_script(proxy: ProxyProcess, database: str, tmp_path: Path) -> None:
    """PostgresML's script in its shape, with our statements: every one succeeds."""
    items = units(own_script(), tmp_path)
    outcomes = run_script(proxy.dsn(database=database), items, tmp_path)
    print(report(outcomes))
    assert all(o.succeeded for o in outcomes), report(outcomes)
