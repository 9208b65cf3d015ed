"""The web dashboard (``--dashboard-port``) and ``/metrics``, against a real proxy process
and PostgreSQL: logins as PostgreSQL roles, pages read as the logged-in role, deploy and
cancel forms with their CSRF and Origin checks, escaping, 404s, a database that is down,
and the same pages in headless Chromium."""

from __future__ import annotations

import base64
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

from tests.conftest import PASSWORDS, missing_tool
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
from tests.support.webclient import Client, Reply, logged_in

EVIL_NAME = "<script>alert(1)</script>"
EVIL_VALUE = "<img src=x onerror=alert(2)>"
TUNE = (
    "SELECT deployed FROM pgml.tune(%s, task => 'text-classification', relation_name => %s, "
    "y_column_name => 'label', model_name => 'distilbert-base-uncased', "
    "hyperparams => %s::jsonb, test_size => 0.25, automatic_deploy => %s)"
)


@dataclass
class Site:
    proxy: ProxyProcess
    base: str
    project: str
    project_id: int
    models: list[int]
    """The project's models: the first deployed, the second not."""
    admin: Client
    """Logged in as the superuser that set the proxy up."""


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
        base = f"http://127.0.0.1:{port}"
        models = [r[1] for r in rows]
        yield Site(proxy, base, name, rows[0][0], models, logged_in(base))
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
    page = site.admin.get("/")
    assert page.status == 200
    assert EVIL_NAME not in page.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    assert f'href="/projects/{site.project_id}"' in page.body
    assert "text-classification" in page.body and "f1 =" in page.body


def test_model_page_has_metrics_hyperparameters_and_curves(
    site: Site, direct: psycopg.Connection[Any]
) -> None:
    model_id = site.models[1]
    page = site.admin.get(f"/models/{model_id}")
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
    page = site.admin.get(f"/projects/{site.project_id}")
    assert page.status == 200 and EVIL_NAME not in page.body
    assert f'id="deploy-{second}"' in page.body and f'id="deploy-{first}"' not in page.body
    deploy = f"/projects/{site.project_id}/deploy"
    csrf = site.admin.csrf(f"/projects/{site.project_id}")
    reply = site.admin.post(deploy, {"model_id": str(second), "csrf": csrf})
    assert reply.status == 200 and reply.url.endswith(f"/projects/{site.project_id}")
    assert deployed_model(direct, site.project) == second
    assert "specific" in reply.body
    # A model of another project, or no model at all, is not found.
    assert site.admin.post(deploy, {"model_id": "0", "csrf": csrf}).status == 404


def test_unknown_ids_give_404(site: Site) -> None:
    for path in ("/projects/987654", "/models/987654", "/models/abc", "/projects/-1", "/nope"):
        reply = site.admin.get(path)
        assert reply.status == 404, path
        assert "Traceback" not in reply.body
    missing = site.admin.get("/?database=no_such_database")
    assert missing.status == 404 and "does not exist" in missing.body
    assert site.admin.get("/").status == 200  # and the session goes on


def test_cancel_from_the_jobs_page(
    site: Site, cluster: PostgresCluster, direct: psycopg.Connection[Any], roles: Roles
) -> None:
    table = f"dash_long_{uuid.uuid4().hex[:8]}"
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    project = f"dash_cancel_{uuid.uuid4().hex[:8]}"
    call = Background(site.proxy.dsn(), long_tune(project, table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        jobs = site.admin.get("/jobs")
        assert jobs.status == 200 and f'id="cancel-{model_id}"' in jobs.body
        assert re.search(rf'data-model="{model_id}".*?\d+ / \d+', jobs.body, re.S)
        live = site.admin.get(f"/models/{model_id}")
        assert 'http-equiv="refresh"' in live.body
        cancel = f"/jobs/{model_id}/cancel"
        # a role that may not change the project's models is refused, and training goes on
        alice = logged_in(site.base, roles.alice)
        assert alice.post(cancel, {"csrf": alice.csrf("/jobs")}).status == 403
        assert site.admin.post(cancel, {"csrf": "forged"}).status == 403
        assert models_of(direct, project)[-1][1] == "in_progress"
        reply = site.admin.post(cancel, {"csrf": site.admin.csrf("/jobs")})
        assert reply.status == 200
        call.join(60)
    finally:
        call.close()
        cluster.psql(f"DROP TABLE IF EXISTS {table} CASCADE")
    assert isinstance(call.error, psycopg.Error), call.error
    assert call.error.sqlstate == "57014"
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled from the dashboard")]
    # A model this proxy is not training cannot be cancelled here.
    assert site.admin.post(cancel, {"csrf": site.admin.csrf("/jobs")}).status == 409


# --- logins and access --------------------------------------------------------------------


@dataclass
class Roles:
    alice: str
    """A login role with no rights of its own (trusted from 127.0.0.1 by the test server)."""
    team: str
    """A group role that can own projects."""


@pytest.fixture(scope="module")
def roles(cluster: PostgresCluster, site: Site) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:6]
    found = Roles(f"alice_{suffix}", f"team_{suffix}")
    cluster.psql(f"CREATE ROLE {found.alice} LOGIN; CREATE ROLE {found.team} NOLOGIN")
    yield found
    for role in (found.alice, found.team):
        cluster.psql(
            f"DELETE FROM pgml.projects WHERE owner::oid = '{role}'::regrole::oid; "
            f"DROP OWNED BY {role}; DROP ROLE {role}"
        )


def test_pages_redirect_to_the_login(site: Site) -> None:
    stranger = Client(site.base)
    for path in ("/", f"/projects/{site.project_id}", f"/models/{site.models[0]}", "/jobs"):
        reply = stranger.get(path, follow=False)
        assert reply.status == 303, path
        location = urllib.parse.urlsplit(reply.headers["Location"])
        assert location.path == "/login"
        assert urllib.parse.parse_qs(location.query) == {"next": [path]}
        page = stranger.get(path)
        assert urllib.parse.urlsplit(page.url).path == "/login"
        assert 'id="login"' in page.body and EVIL_NAME[1:7] not in page.body
    deploy = f"/projects/{site.project_id}/deploy"
    assert stranger.post(deploy, {"model_id": str(site.models[1])}).status == 403
    # after the login, the page asked for first
    reply = stranger.log_in("postgres", next_path=f"/projects/{site.project_id}")
    assert reply.url.endswith(f"/projects/{site.project_id}") and "<h2>Models</h2>" in reply.body
    assert Client(site.base).log_in("postgres", next_path="//evil.example/").url == site.base + "/"


def test_the_session_cookie(
    site: Site, cluster: PostgresCluster, direct: psycopg.Connection[Any]
) -> None:
    role = f"dora_{uuid.uuid4().hex[:6]}"
    cluster.psql(f"CREATE ROLE {role} LOGIN")
    client = Client(site.base)
    token = client.csrf("/login")
    form = {"role": role, "password": "", "csrf": token, "next": "/"}
    reply = client.post("/login", form, follow=False)
    assert reply.status == 303
    cookie = next(c for c in reply.headers.get_all("Set-Cookie") or [] if "pgml_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = client.session_cookie()
    assert session is not None and len(session) >= 40
    kept = next(c for c in client.cookies if c.name == "pgml_session")

    def connections() -> int:
        row = direct.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
            "AND application_name LIKE 'pgml-proxy dashboard (%%)'",
            [role],
        ).fetchone()
        return int(row[0]) if row else -1

    assert client.get("/").status == 200
    assert connections() == 1  # the pages read as the role, on the login's connection
    assert client.post("/logout", {"csrf": "wrong"}).status == 403  # logging out is a form too
    assert client.post("/logout", {"csrf": client.csrf()}).url.endswith("/login")
    deadline = time.monotonic() + 10
    while connections() and time.monotonic() < deadline:  # closed with its last session
        time.sleep(0.1)
    assert connections() == 0
    # the old cookie is worth nothing now
    replay = Client(site.base)
    replay.cookies.set_cookie(kept)
    assert replay.get("/", follow=False).status == 303
    cluster.psql(f"DROP ROLE {role}")


@pytest.mark.parametrize("role", ["scram_user", "md5_user", "plain_user"])
def test_a_wrong_password_is_refused(site: Site, role: str) -> None:
    client = Client(site.base)
    reply = client.log_in(role, "not the password")
    assert reply.status == 401 and 'id="login-error"' in reply.body
    assert client.session_cookie() is None
    assert client.get("/", follow=False).status == 303
    assert "logged in as" not in client.log_in("no_such_role", "x").body
    reply = client.log_in(role, PASSWORDS[role])
    assert reply.status == 200 and f"logged in as {role}" in reply.body


def test_the_login_form_needs_its_token_and_origin(site: Site) -> None:
    client = Client(site.base)
    token = client.csrf("/login")
    form = {"role": "postgres", "password": "", "next": "/"}
    assert client.post("/login", form | {"csrf": "forged"}).status == 403
    assert client.post("/login", form | {"csrf": token}, origin="http://evil.example").status == 403
    assert client.session_cookie() is None
    assert client.post("/login", form | {"csrf": token}).status == 200


def test_alice_sees_only_what_her_grants_let_her_see(
    site: Site, cluster: PostgresCluster, direct: psycopg.Connection[Any], roles: Roles
) -> None:
    own = f"alice project {uuid.uuid4().hex[:6]}"
    direct.execute(
        "INSERT INTO pgml.projects (name, task, owner) VALUES (%s, 'translation', %s)",
        [own, roles.alice],
    )
    alice = logged_in(site.base, roles.alice)
    assert site.project.split()[-1] in alice.get("/").body  # PUBLIC may read the catalog
    with psycopg.connect(site.proxy.dsn(), autocommit=True) as conn:  # the model is loaded
        conn.execute("SELECT pgml.predict(%s, 'I love SQL')", [site.project]).fetchall()
    assert site.project.split()[-1] in alice.get("/loaded").body
    cluster.psql(
        "ALTER TABLE pgml.projects ENABLE ROW LEVEL SECURITY; "
        "CREATE POLICY owners ON pgml.projects USING (pg_has_role(owner, 'MEMBER'))"
    )
    try:
        index = alice.get("/")
        assert index.status == 200
        assert (
            site.project.split()[-1] not in index.body and own.replace("'", "&#39;") in index.body
        )
        assert alice.get(f"/projects/{site.project_id}").status == 404
        assert alice.get(f"/models/{site.models[0]}").status == 404
        assert site.project.split()[-1] not in alice.get("/loaded").body  # nor its model
        assert site.project.split()[-1] in site.admin.get("/").body  # the superuser sees all
        assert site.project.split()[-1] in site.admin.get("/loaded").body
        cluster.psql("REVOKE SELECT ON pgml.models FROM PUBLIC")
        refused = alice.get("/")
        assert refused.status == 403 and "permission denied for table models" in refused.body
    finally:
        cluster.psql(
            "GRANT SELECT ON pgml.models TO PUBLIC; DROP POLICY owners ON pgml.projects; "
            "ALTER TABLE pgml.projects DISABLE ROW LEVEL SECURITY"
        )
        direct.execute("DELETE FROM pgml.projects WHERE name = %s", [own])


def test_forged_posts_are_refused_and_change_nothing(
    site: Site, direct: psycopg.Connection[Any]
) -> None:
    current = deployed_model(direct, site.project)
    other = next(m for m in site.models if m != current)
    deploy = f"/projects/{site.project_id}/deploy"
    token = site.admin.csrf(f"/projects/{site.project_id}")
    for form, origin, headers in (
        ({"model_id": str(other)}, "", None),  # no token
        ({"model_id": str(other), "csrf": token[:-1]}, "", None),  # a wrong one
        ({"model_id": str(other), "csrf": Client(site.base).csrf("/login")}, "", None),
        ({"model_id": str(other), "csrf": token}, "http://evil.example", None),  # another site
        ({"model_id": str(other), "csrf": token}, "null", None),
        ({"model_id": str(other), "csrf": token}, None, None),  # no Origin, no Referer
        ({"model_id": str(other), "csrf": token}, None, {"Referer": "http://evil.example/x"}),
    ):
        reply = site.admin.post(deploy, form, origin=origin, headers=headers)
        assert reply.status == 403, (form, origin, headers)
        assert "Forbidden" in reply.body
        assert deployed_model(direct, site.project) == current
    # a Referer of the dashboard's own stands in for a missing Origin
    referer = {"Referer": f"{site.base}/projects/{site.project_id}"}
    form = {"model_id": str(other), "csrf": token}
    assert site.admin.post(deploy, form, origin=None, headers=referer).status == 200
    assert deployed_model(direct, site.project) == other
    site.admin.post(deploy, {"model_id": str(current), "csrf": token})
    assert deployed_model(direct, site.project) == current


def test_deploy_by_a_role_without_the_rights_is_refused(
    site: Site, cluster: PostgresCluster, direct: psycopg.Connection[Any], roles: Roles
) -> None:
    current = deployed_model(direct, site.project)
    other = next(m for m in site.models if m != current)
    page = f"/projects/{site.project_id}"
    alice = logged_in(site.base, roles.alice)
    shown = alice.get(page).body
    assert 'id="refusal"' in shown and f'id="deploy-{other}"' not in shown
    form = {"model_id": str(other), "csrf": alice.csrf()}
    reply = alice.post(page + "/deploy", form)
    assert reply.status == 403 and "pgml.deployments" in reply.body
    cluster.psql(f"GRANT INSERT ON pgml.deployments TO {roles.alice}")
    direct.execute(
        "UPDATE pgml.projects SET owner = %s WHERE id = %s", [roles.team, site.project_id]
    )
    try:
        reply = alice.post(page + "/deploy", form)  # the project is the team's
        assert reply.status == 403 and "belongs to role" in reply.body
        assert deployed_model(direct, site.project) == current
        cluster.psql(f"GRANT {roles.team} TO {roles.alice}")
        assert f'id="deploy-{other}"' in alice.get(page).body
        assert alice.post(page + "/deploy", form).status == 200
        assert deployed_model(direct, site.project) == other
    finally:
        direct.execute(
            "UPDATE pgml.projects SET owner = 'postgres' WHERE id = %s", [site.project_id]
        )
        cluster.psql(
            f"REVOKE INSERT ON pgml.deployments FROM {roles.alice}; "
            f"REVOKE {roles.team} FROM {roles.alice}"
        )
    site.admin.post(page + "/deploy", {"model_id": str(current), "csrf": site.admin.csrf()})
    assert deployed_model(direct, site.project) == current


def test_metrics_can_require_a_login(cluster: PostgresCluster) -> None:
    port = free_port()
    proxy = ProxyProcess(
        "--upstream",
        cluster.dsn(),
        "--dashboard-port",
        str(port),
        "--dashboard-metrics-login",
        "true",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        reply = Client(base).get("/metrics")
        assert reply.status == 401 and "Basic" in reply.headers["WWW-Authenticate"]

        def basic(role: str, password: str) -> Reply:
            secret = base64.b64encode(f"{role}:{password}".encode()).decode()
            request = urllib.request.Request(
                base + "/metrics", headers={"Authorization": f"Basic {secret}"}
            )
            return Client(base)._send(request, follow=True)

        assert basic("scram_user", "wrong").status == 401
        assert basic("scram_user", PASSWORDS["scram_user"]).status == 200
        assert "pgml_proxy_connections_total" in basic("md5_user", PASSWORDS["md5_user"]).body
        assert logged_in(base).get("/metrics").status == 200  # or a dashboard session
    finally:
        proxy.stop()


def metric_values(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = Client(base).get("/metrics").body  # no login needed by default
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
        client = logged_in(f"http://127.0.0.1:{port}")
        assert client.get("/").status == 200
        server.stop()
        reply = client.get("/")
        assert reply.status == 503
        assert "Database unavailable" in reply.body and "Traceback" not in reply.body
        assert client.get("/metrics").status == 200
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
        missing_tool("headless Chromium tests need the chromium and chromium-driver packages")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_tool("headless Chromium tests need selenium (the test extra)")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,1600")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(browser: Any, path: Path) -> None:
    """The whole page as a PNG (the window grown to the page's height)."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, max(600, int(height)))
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000


def waited(browser: Any, element_id: str) -> Any:
    """The element once the page that has it is there (a click's page may still load)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, element_id))


def click_until_posted(browser: Any, page: str, button_id: str) -> float:
    """Click a form's button on ``page`` until its POST is answered (the page the
    browser shows came by the form's redirect), as a person clicks again a button that
    the page's own refresh replaced under the pointer; when the answered click was made."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    redirected = "return performance.getEntriesByType('navigation')[0].redirectCount"
    for _ in range(5):
        browser.get(page)
        button = waited(browser, button_id)
        clicked = time.monotonic()
        try:
            button.click()
            WebDriverWait(browser, 10).until(lambda b: b.execute_script(redirected) > 0)
        except (StaleElementReferenceException, TimeoutException):
            continue
        return clicked
    raise AssertionError(f"no click of {button_id} was answered")


def browser_log_in(browser: Any, base: str, role: str = "postgres", password: str = "") -> None:
    """Log in through the form, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(base + "/login")
    browser.find_element(By.ID, "login-role").send_keys(role)
    browser.find_element(By.ID, "login-password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()
    WebDriverWait(browser, 30).until(
        lambda b: b.find_elements(By.ID, "role") or b.find_elements(By.ID, "login-error")
    )
    assert browser.find_element(By.ID, "role").text == f"logged in as {role}"


def test_browser_model_page_chart(
    site: Site, browser: Any, direct: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser_log_in(browser, site.base)
    model_id = site.models[0]
    browser.get(f"{site.base}/models/{model_id}")
    chart = browser.find_element(By.CSS_SELECTOR, 'svg.chart[data-series="loss"]')
    assert chart.is_displayed() and chart.size["width"] > 100
    line = chart.find_element(By.TAG_NAME, "polyline")
    points = browser.execute_script("return arguments[0].points.numberOfItems", line)
    assert points == loss_entries(direct, model_id)
    assert browser.title.startswith(f"Model {model_id}")
    eval_loss = chart.find_element(By.CSS_SELECTOR, 'polyline[data-series="eval_loss"]')
    assert eval_loss.get_attribute("points")  # on the same chart, to compare with
    assert not browser.find_elements(By.CSS_SELECTOR, 'svg.chart[data-series="eval_loss"]')
    f1 = browser.find_element(By.CSS_SELECTOR, 'svg.chart[data-series="f1"]')
    labels = [t.text for t in f1.find_elements(By.TAG_NAME, "text")]
    assert labels[0] != labels[1]  # distinct ends of the value axis
    assert f1.find_elements(By.CSS_SELECTOR, "circle.dot")  # the evaluations are drawn
    screenshot(browser, tmp_path / "model.png")


def test_browser_deploy_button(
    site: Site, browser: Any, direct: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    browser_log_in(browser, site.base)
    current = deployed_model(direct, site.project)
    other = next(m for m in site.models if m != current)
    browser.get(f"{site.base}/projects/{site.project_id}")
    assert EVIL_NAME in browser.find_element(By.TAG_NAME, "h1").text  # shown as text
    browser.find_element(By.ID, f"deploy-{other}").click()
    settled = WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException])
    settled.until(  # the page the form's POST leads back to
        lambda b: "deployed" in b.find_element(By.CSS_SELECTOR, f'tr[data-model="{other}"]').text
    )
    assert deployed_model(direct, site.project) == other
    screenshot(browser, tmp_path / "project.png")


def test_browser_login(site: Site, browser: Any, tmp_path: Path) -> None:
    """A page asked for without a login shows the login; a wrong password is refused there;
    the right one leads to the page asked for."""
    from selenium.webdriver.common.by import By

    browser.get(f"{site.base}/models/{site.models[0]}")
    assert browser.title.startswith("Log in") and "/login?next=" in browser.current_url
    screenshot(browser, tmp_path / "login.png")
    browser.find_element(By.ID, "login-role").send_keys("scram_user")
    browser.find_element(By.ID, "login-password").send_keys("not the password")
    browser.find_element(By.ID, "login-submit").click()
    assert "Login failed" in waited(browser, "login-error").text
    assert not browser.get_cookie("pgml_session")
    browser.find_element(By.ID, "login-password").send_keys(PASSWORDS["scram_user"])
    browser.find_element(By.ID, "login-submit").click()
    assert waited(browser, "role").text == "logged in as scram_user"
    assert browser.title.startswith(f"Model {site.models[0]}")
    cookie = browser.get_cookie("pgml_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    browser.find_element(By.ID, "logout").click()
    waited(browser, "login")
    assert browser.title.startswith("Log in")
    browser.get(site.base + "/jobs")
    assert browser.title.startswith("Log in")


def test_browser_a_role_without_rights_gets_no_deploy_button(
    site: Site, browser: Any, roles: Roles, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser_log_in(browser, site.base, roles.alice)
    browser.get(f"{site.base}/projects/{site.project_id}")
    assert "pgml.deployments" in browser.find_element(By.ID, "refusal").text
    assert not browser.find_elements(By.CSS_SELECTOR, 'button[id^="deploy-"]')
    screenshot(browser, tmp_path / "refused.png")


def test_browser_projects_page(site: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser_log_in(browser, site.base)
    browser.get(site.base + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert any(EVIL_NAME in row.text for row in rows)  # listed, and shown as text
    assert not browser.find_elements(By.TAG_NAME, "script")  # the name did not become one


def test_browser_cancel_from_the_jobs_page(
    site: Site, browser: Any, cluster: PostgresCluster, direct: psycopg.Connection[Any]
) -> None:
    browser_log_in(browser, site.base)
    table = f"dash_long_{uuid.uuid4().hex[:8]}"
    create_table(cluster, table, "(text text, label int)", TWO_CLASSES, count=LONG_ROWS)
    project = f"dash_browser_{uuid.uuid4().hex[:8]}"
    call = Background(site.proxy.dsn(), long_tune(project, table))
    try:
        model_id = wait_until_training(direct, project, call.thread.is_alive)
        clicked = click_until_posted(browser, site.base + "/jobs", f"cancel-{model_id}")
        call.join(60)
        stopped_in = time.monotonic() - clicked
    finally:
        call.close()
        cluster.psql(f"DROP TABLE IF EXISTS {table} CASCADE")
    assert isinstance(call.error, psycopg.Error) and call.error.sqlstate == "57014"
    assert stopped_in < 5
    assert models_of(direct, project) == [(model_id, "cancelled", "cancelled from the dashboard")]


def test_browser_classic_models(site: Site, browser: Any, tmp_path: Path) -> None:
    """Models of pgml.train beside tuned ones: their algorithm, metrics, hyperparameters,
    search results and feature columns."""
    from selenium.webdriver.common.by import By

    project = f"{EVIL_NAME} iris {uuid.uuid4().hex[:8]}"
    with psycopg.connect(site.proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.load_dataset('iris')")
        conn.execute(
            "SELECT * FROM pgml.train(%s, 'classification', 'pgml.iris', 'target')", [project]
        )
        conn.execute(
            "SELECT * FROM pgml.train(%s, algorithm => 'random_forest', hyperparams => "
            """'{"random_state": 0}', search => 'grid', search_params => """
            """'{"n_estimators": [2, 4], "max_depth": [1, 2]}')""",
            [project],
        )
        rows = conn.execute(
            "SELECT p.id, m.id FROM pgml.projects AS p JOIN pgml.models AS m "
            "ON m.project_id = p.id WHERE p.name = %s ORDER BY m.id",
            [project],
        ).fetchall()
    project_id, (linear, forest) = rows[0][0], [m for _, m in rows]
    browser_log_in(browser, site.base)
    browser.get(site.base)
    assert project in browser.find_element(By.ID, "projects").text
    browser.get(f"{site.base}/projects/{project_id}")
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#models th")]
    assert headers[:6] == ["Model", "Status", "Algorithm", "f1", "Search", "Fit time (s)"]
    cells = browser.find_element(By.CSS_SELECTOR, f'tr[data-model="{forest}"]').text
    assert "random_forest" in cells and "grid" in cells
    assert "linear" in browser.find_element(By.CSS_SELECTOR, f'tr[data-model="{linear}"]').text
    screenshot(browser, tmp_path / "classic-project.png")

    browser.get(f"{site.base}/models/{forest}")
    assert browser.find_element(By.ID, "algorithm").text == "random_forest"
    metrics = browser.find_element(By.ID, "metrics").text
    assert all(name in metrics for name in ("f1", "accuracy", "roc_auc", "fit_time"))
    assert "search_results" not in metrics and "Before tuning" not in metrics
    hyperparams = browser.find_element(By.ID, "hyperparams").text
    assert "n_estimators" in hyperparams and "random_state" in hyperparams
    assert browser.find_element(By.ID, "search").text.startswith("grid search over")
    candidates = browser.find_elements(By.CSS_SELECTOR, "#search-results tbody tr")
    assert len(candidates) == 4
    features = [
        r.find_elements(By.TAG_NAME, "td")[0].text
        for r in browser.find_elements(By.CSS_SELECTOR, "#features tbody tr")
    ]
    assert features == ["petal_length", "petal_width", "sepal_length", "sepal_width"]
    assert not browser.find_elements(By.ID, "curves")  # no training curves for an algorithm
    screenshot(browser, tmp_path / "classic-model.png")
