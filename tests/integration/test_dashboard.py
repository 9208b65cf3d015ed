"""The web dashboard (``--dashboard-port``) and ``/metrics``, against a real proxy process
and PostgreSQL: pages, deploy and cancel forms, escaping, 404s, a database that is down,
and the same pages in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import tuning_proxy
from tests.integration.test_serving import make_reviews
from tests.integration.test_tune_errors import (
    LONG_ROWS,
    TWO_CLASSES,
    Background,
    create_table,
    long_tune,
    models_of,
    wait_until_training,
)
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess

EVIL_NAME = "<script>alert(1)</script>"
EVIL_VALUE = "<img src=x onerror=alert(2)>"
TUNE = (
    "SELECT deployed FROM pgml.tune(%s, task => 'text-classification', relation_name => %s, "
    "y_column_name => 'label', model_name => 'distilbert-base-uncased', "
    "hyperparams => %s::jsonb, test_size => 0.25, automatic_deploy => %s)"
)


@dataclass
class Reply:
    status: int
    body: str
    url: str


def fetch(url: str, form: dict[str, str] | None = None) -> Reply:
    data = None if form is None else urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=60) as reply:
            return Reply(reply.status, reply.read().decode(), reply.geturl())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read().decode(), url)


@dataclass
class Site:
    proxy: ProxyProcess
    base: str
    project: str
    project_id: int
    models: list[int]
    """The project's models: the first deployed, the second not."""


@pytest.fixture(scope="module")
def direct(cluster: PostgresCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def site(
    cluster: PostgresCluster,
    models_dir: Path,
    guide_datasets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    direct: psycopg.Connection[Any],
) -> Iterator[Site]:
    """A proxy with its dashboard on, and a project (with an HTML name) of two models."""
    port = free_port()
    proxy = tuning_proxy(
        cluster,
        models_dir,
        guide_datasets_dir,
        tmp_path_factory.mktemp("cache"),
        "--dashboard-port",
        str(port),
    )
    table = f"dash_{uuid.uuid4().hex[:8]}"
    make_reviews(cluster, table)
    cluster.psql(f"CREATE VIEW {table}_in AS SELECT text, label FROM {table}")
    name = f"{EVIL_NAME} {table}"
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            first = json.dumps({"num_train_epochs": 1, "per_device_train_batch_size": 8})
            second = json.dumps(
                {"num_train_epochs": 1, "per_device_train_batch_size": 8, "run_name": EVIL_VALUE}
            )
            assert conn.execute(TUNE, (name, f"{table}_in", first, True)).fetchone() == (True,)
            assert conn.execute(TUNE, (name, f"{table}_in", second, False)).fetchone() == (False,)
        rows = direct.execute(
            "SELECT p.id, m.id FROM pgml.projects AS p JOIN pgml.models AS m "
            "ON m.project_id = p.id WHERE p.name = %s ORDER BY m.id",
            [name],
        ).fetchall()
        yield Site(proxy, f"http://127.0.0.1:{port}", name, rows[0][0], [r[1] for r in rows])
    finally:
        proxy.stop()
        cluster.psql(f"DROP TABLE IF EXISTS {table} CASCADE")


def deployed_model(direct: psycopg.Connection[Any], project: str) -> int:
    row = direct.execute("SELECT id FROM pgml.deployed_models WHERE name = %s", [project])
    found = row.fetchone()
    assert found is not None
    return int(found[0])


def loss_entries(direct: psycopg.Connection[Any], model_id: int) -> int:
    row = direct.execute(
        "SELECT count(*) FROM pgml.logs WHERE model_id = %s AND logs ? 'loss'", [model_id]
    ).fetchone()
    assert row is not None
    return int(row[0])


def polyline_points(page: str, series: str) -> int:
    match = re.search(
        rf'<svg[^>]*data-series="{series}"[^>]*>.*?<polyline[^>]*points="([^"]*)"', page, re.S
    )
    assert match is not None, f"no {series} chart"
    return len(match.group(1).split())


# --- pages ---------------------------------------------------------------------------------


def test_projects_page_lists_the_project_escaped(site: Site) -> None:
    page = fetch(site.base + "/")
    assert page.status == 200
    assert EVIL_NAME not in page.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    assert f'href="/projects/{site.project_id}"' in page.body
    assert "text-classification" in page.body and "f1 =" in page.body


def test_model_page_has_metrics_hyperparameters_and_curves(
    site: Site, direct: psycopg.Connection[Any]
) -> None:
    model_id = site.models[1]
    page = fetch(f"{site.base}/models/{model_id}")
    assert page.status == 200
    metrics = page.body.split('<table id="metrics">')[1].split("</table>")[0]
    assert "<td>f1</td>" in metrics and "<td>train_time</td>" in metrics
    f1_row = re.search(r"<td>f1</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td>", metrics)
    assert f1_row is not None and "—" not in f1_row.groups(), f1_row
    assert EVIL_VALUE not in page.body
    assert "&lt;img src=x onerror=alert(2)&gt;" in page.body
    assert "num_train_epochs" in page.body
    expected = loss_entries(direct, model_id)
    assert expected > 0
    assert polyline_points(page.body, "loss") == expected
    assert 'data-series="learning_rate"' in page.body
    assert 'http-equiv="refresh"' not in page.body  # finished: no reload
    assert "Relation" in page.body and "Rows" in page.body
    snapshot = page.body.split('<table id="snapshot">')[1].split("</table>")[0]
    assert "<code>sha256:" in snapshot and "Kept as a table</td><td>no" in snapshot
    parameters = page.body.split('<table id="parameters">')[1].split("</table>")[0]
    logged = direct.execute(
        "SELECT logs FROM pgml.logs WHERE model_id = %s AND logs ? 'trainable_parameters'",
        [model_id],
    ).fetchone()
    assert logged is not None
    assert "<td>Tuning</td><td>full</td>" in parameters
    total = logged[0]["total_parameters"]
    assert f'<td>Total parameters</td><td class="num">{total}</td>' in parameters
    assert "100.00%" in parameters


def test_project_page_and_deploy_form(site: Site, direct: psycopg.Connection[Any]) -> None:
    first, second = site.models[:2]
    assert deployed_model(direct, site.project) == first
    page = fetch(f"{site.base}/projects/{site.project_id}")
    assert page.status == 200 and EVIL_NAME not in page.body
    assert f'id="deploy-{second}"' in page.body and f'id="deploy-{first}"' not in page.body
    reply = fetch(f"{site.base}/projects/{site.project_id}/deploy", {"model_id": str(second)})
    assert reply.status == 200 and reply.url.endswith(f"/projects/{site.project_id}")
    assert deployed_model(direct, site.project) == second
    assert "specific" in reply.body
    # A model of another project, or no model at all, is not found.
    assert fetch(f"{site.base}/projects/{site.project_id}/deploy", {"model_id": "0"}).status == 404


def test_unknown_ids_give_404(site: Site) -> None:
    for path in ("/projects/987654", "/models/987654", "/models/abc", "/projects/-1", "/nope"):
        reply = fetch(site.base + path)
        assert reply.status == 404, path
        assert "Traceback" not in reply.body


def test_cancel_from_the_jobs_page(
    site: Site, cluster: PostgresCluster, direct: psycopg.Connection[Any]
) -> None:
    table = f"dash_long_{uuid.uuid4().hex[:8]}"
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    project = f"dash_cancel_{uuid.uuid4().hex[:8]}"
    call = Background(site.proxy.dsn(), long_tune(project, table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        jobs = fetch(site.base + "/jobs")
        assert jobs.status == 200 and f'id="cancel-{model_id}"' in jobs.body
        assert re.search(rf'data-model="{model_id}".*?\d+ / \d+', jobs.body, re.S)
        live = fetch(f"{site.base}/models/{model_id}")
        assert 'http-equiv="refresh"' in live.body
        reply = fetch(f"{site.base}/jobs/{model_id}/cancel", {})
        assert reply.status == 200
        call.join(60)
    finally:
        call.close()
        cluster.psql(f"DROP TABLE IF EXISTS {table} CASCADE")
    assert isinstance(call.error, psycopg.Error), call.error
    assert call.error.sqlstate == "57014"
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled from the dashboard")]
    # A model this proxy is not training cannot be cancelled here.
    assert fetch(f"{site.base}/jobs/{model_id}/cancel", {}).status == 409


def metric_values(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = fetch(base + "/metrics").body
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_move_after_statements(site: Site) -> None:
    before = metric_values(site.base)
    with psycopg.connect(site.proxy.dsn(), autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT 1")
        conn.execute("SELECT %s::int", [1])  # extended protocol: a Parse
        conn.execute(
            "SELECT pgml.predict(%s, t) FROM (VALUES ('great'), ('dull')) AS v(t)",
            [site.project],
        ).fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT pgml.predict('no such project dash', 'x')")
    after = metric_values(site.base)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("pgml_proxy_statements_relayed_total") >= 4
    assert moved("pgml_proxy_connections_total") >= 1
    assert ("pgml_proxy_connections_open", ()) in after
    assert moved("pgml_proxy_pgml_calls_total", function="pgml.predict", status="ok") == 1
    assert moved("pgml_proxy_pgml_calls_total", function="pgml.predict", status="error") == 1
    assert moved("pgml_proxy_rows_in_total", function="pgml.predict") == 2
    assert moved("pgml_proxy_rows_out_total", function="pgml.predict") == 2
    assert moved("pgml_proxy_pgml_call_seconds_count", function="pgml.predict") == 2
    assert after[("pgml_proxy_models_loaded", ())] >= 1
    assert after[("pgml_proxy_model_parameter_bytes", ())] > 0


def test_database_down_page(tmp_path: Path) -> None:
    server = PostgresCluster().start()
    port = free_port()
    proxy = ProxyProcess("--upstream", server.dsn(), "--dashboard-port", str(port)).start()
    try:
        assert fetch(f"http://127.0.0.1:{port}/").status == 200
        server.stop()
        reply = fetch(f"http://127.0.0.1:{port}/")
        assert reply.status == 503
        assert "Database unavailable" in reply.body and "Traceback" not in reply.body
        assert fetch(f"http://127.0.0.1:{port}/metrics").status == 200
    finally:
        proxy.stop()
        server.stop()


def test_dashboard_is_off_by_default(cluster: PostgresCluster) -> None:
    port = free_port()
    proxy = ProxyProcess("--upstream", cluster.dsn()).start()
    try:
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        proxy.stop()


# --- in a browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium tests need the chromium and chromium-driver packages")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1600")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_browser_model_page_chart(
    site: Site, browser: Any, direct: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    model_id = site.models[0]
    browser.get(f"{site.base}/models/{model_id}")
    chart = browser.find_element(By.CSS_SELECTOR, 'svg.chart[data-series="loss"]')
    assert chart.is_displayed() and chart.size["width"] > 100
    line = chart.find_element(By.TAG_NAME, "polyline")
    points = browser.execute_script("return arguments[0].points.numberOfItems", line)
    assert points == loss_entries(direct, model_id)
    assert browser.title.startswith(f"Model {model_id}")
    shot = tmp_path / "model.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_browser_deploy_button(
    site: Site, browser: Any, direct: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    current = deployed_model(direct, site.project)
    other = next(m for m in site.models if m != current)
    browser.get(f"{site.base}/projects/{site.project_id}")
    assert EVIL_NAME in browser.find_element(By.TAG_NAME, "h1").text  # shown as text
    browser.find_element(By.ID, f"deploy-{other}").click()
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-model="{other}"]')
    assert "deployed" in row.text
    assert deployed_model(direct, site.project) == other
    browser.save_screenshot(str(tmp_path / "project.png"))


def test_browser_projects_page(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site.base + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert any(EVIL_NAME in row.text for row in rows)  # listed, and shown as text
    assert not browser.find_elements(By.TAG_NAME, "script")  # the name did not become one


def test_browser_cancel_from_the_jobs_page(
    site: Site, browser: Any, cluster: PostgresCluster, direct: psycopg.Connection[Any]
) -> None:
    from selenium.webdriver.common.by import By

    table = f"dash_long_{uuid.uuid4().hex[:8]}"
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    project = f"dash_browser_{uuid.uuid4().hex[:8]}"
    call = Background(site.proxy.dsn(), long_tune(project, table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        browser.get(site.base + "/jobs")
        clicked = time.monotonic()
        browser.find_element(By.ID, f"cancel-{model_id}").click()
        call.join(60)
        stopped_in = time.monotonic() - clicked
    finally:
        call.close()
        cluster.psql(f"DROP TABLE IF EXISTS {table} CASCADE")
    assert isinstance(call.error, psycopg.Error) and call.error.sqlstate == "57014"
    assert stopped_in < 5
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled from the dashboard")]
