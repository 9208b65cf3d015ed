"""The dashboard does not lend the proxy's rights or capacity: failed logins are slowed
down, ``next=`` stays on the dashboard, its connections come from a bounded pool per role
and in all that leaves the server's reserved slots alone, a page neither creates the
catalog nor reaches a database the role may not connect to, and ``/metrics`` names no
model without a login. Against a private PostgreSQL with few connection slots, real roles
and a real proxy process, over HTTP and in headless Chromium."""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboard.logins import FREE_SLOTS_SQL
from tests.conftest import PASSWORDS
from tests.integration.test_dashboard import browser, browser_log_in, waited
from tests.support.fuzz import MODEL
from tests.support.pgserver import PostgresCluster, free_port
from tests.support.proxyproc import ProxyProcess
from tests.support.webclient import Client, Reply, logged_in

__all__ = ["browser"]  # a fixture of the browser tests below

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
DASHBOARD = "pgml-proxy dashboard (%)"
"""The dashboard's connections' application_name, as a LIKE pattern."""
PER_ROLE = 2
IN_ALL = 4
IDLE = 1.5
WAIT = 1.0
DELAY = 1.0
MAX_DELAY = 2.0
ROLES = ("alice", "bob", "carol", "filler")


@dataclass
class Lab:
    server: PostgresCluster
    proxy: ProxyProcess
    base: str

    def dashboard_connections(self, role: str | None = None) -> int:
        """The dashboard's connections to the server now (of ``role``)."""
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '{DASHBOARD}'"
        if role is not None:
            sql += f" AND usename = '{role}'"
        return int(self.server.psql(sql))

    def wait_for(self, done: Callable[[], bool], seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def has_catalog(self, database: str) -> bool:
        found = "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgml'"
        return self.server.psql(found, database=database).strip() == "1"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A server of 20 slots (3 for superusers, 2 for pg_use_reserved_connections), roles
    that log in with a password or are trusted, a database no role but the superuser may
    connect to, one without the catalog, and a proxy whose dashboard has small caps."""
    server = PostgresCluster(
        max_connections=20,
        settings={"superuser_reserved_connections": "3", "reserved_connections": "2"},
    ).start()
    try:
        for role in PASSWORDS:
            server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORDS[role]}'")
        for role in ROLES:
            server.psql(f"CREATE ROLE {role} LOGIN")
        for database in ("nocon", "nocatalog"):
            server.psql(f"CREATE DATABASE {database}")
        server.psql("REVOKE CONNECT ON DATABASE nocon FROM PUBLIC")
        port = free_port()
        proxy = ProxyProcess(
            "--upstream",
            server.dsn(),
            "--dashboard-port",
            str(port),
            "--dashboard-connections",
            str(IN_ALL),
            "--dashboard-connections-per-role",
            str(PER_ROLE),
            "--dashboard-connection-idle",
            str(IDLE),
            "--dashboard-connection-wait",
            str(WAIT),
            "--dashboard-login-delay",
            str(DELAY),
            "--dashboard-login-max-delay",
            str(MAX_DELAY),
            env=OFFLINE,
        ).start()
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.execute("SELECT pgml.version()")  # the catalog of database postgres
            yield Lab(server, proxy, f"http://127.0.0.1:{port}")
        finally:
            proxy.stop()
    finally:
        server.stop()


def log_in_form(client: Client, role: str, password: str, next_path: str = "/") -> Reply:
    """The login form posted, the reply not followed."""
    token = client.csrf("/login")
    form = {"role": role, "password": password, "csrf": token, "next": next_path}
    return client.post("/login", form, follow=False)


# --- next= ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/\t/evil.example/",
        "/\n/evil.example/",
        "/\r\n/evil.example/",
        "\t//evil.example/",
        "//evil.example/",
        "///evil.example/",
        "/\\evil.example/",
        "\\\\evil.example/",
        "http://evil.example/",
        "https:evil.example",
        "javascript:alert(1)",
        "evil.example",
        " /x",
        "/\x00/evil.example",
        "/\u2028/evil.example",
    ],
)
def test_next_leads_only_to_a_local_path(lab: Lab, raw: str) -> None:
    client = Client(lab.base)
    reply = log_in_form(client, "alice", "", raw)
    assert reply.status == 303 and reply.headers["Location"] == "/", raw
    # the form shows the same, and so does a logged-in visit of /login?next=
    assert (
        client.get("/login?" + urllib.parse.urlencode({"next": raw}), follow=False).headers[
            "Location"
        ]
        == "/"
    )
    shown = Client(lab.base).get("/login?" + urllib.parse.urlencode({"next": raw})).body
    assert 'name="next" value="/"' in shown


def test_next_keeps_a_local_path(lab: Lab) -> None:
    reply = log_in_form(Client(lab.base), "alice", "", "/jobs?database=nocatalog")
    assert reply.status == 303 and reply.headers["Location"] == "/jobs?database=nocatalog"


# --- failed logins -------------------------------------------------------------------------


def test_failed_logins_of_a_role_wait_longer_each_time(lab: Lab) -> None:
    client = Client(lab.base)
    right = PASSWORDS["scram_user"]
    for _ in range(3):
        assert log_in_form(client, "scram_user", "wrong").status == 401
    began = time.monotonic()
    refused = log_in_form(client, "scram_user", right)  # even the right one waits
    assert refused.status == 429 and "Too many failed logins" in refused.body
    assert int(refused.headers["Retry-After"]) >= 1
    assert client.session_cookie() is None
    # another address is not slowed down by these failures
    elsewhere = Client(lab.base, source="127.0.0.2")
    assert log_in_form(elsewhere, "scram_user", right).status == 303
    time.sleep(max(0.0, DELAY - (time.monotonic() - began)) + 0.05)
    assert log_in_form(client, "scram_user", "wrong").status == 401  # the 4th failure
    began = time.monotonic()
    assert log_in_form(client, "scram_user", right).status == 429  # doubled: 2 * DELAY
    time.sleep(DELAY)
    assert log_in_form(client, "scram_user", right).status == 429
    time.sleep(max(0.0, 2 * DELAY - (time.monotonic() - began)) + 0.05)
    assert log_in_form(client, "scram_user", right).status == 303
    # a success starts the count again
    for _ in range(3):
        assert log_in_form(Client(lab.base), "scram_user", "wrong").status == 401
    assert log_in_form(Client(lab.base), "scram_user", right).status == 429
    time.sleep(DELAY + 0.05)
    assert log_in_form(Client(lab.base), "scram_user", right).status == 303


def test_parallel_guesses_are_not_all_answered(lab: Lab) -> None:
    statuses: list[int] = []
    clients = [Client(lab.base, source="127.0.0.3") for _ in range(20)]
    tokens = [c.csrf("/login") for c in clients]

    def guess(client: Client, token: str) -> None:
        form = {"role": "md5_user", "password": "wrong", "csrf": token, "next": "/"}
        statuses.append(client.post("/login", form, follow=False).status)

    threads = [
        threading.Thread(target=guess, args=pair) for pair in zip(clients, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(statuses) == 20 and set(statuses) <= {401, 429}
    assert statuses.count(401) <= 3, statuses


def test_guesses_of_many_roles_from_one_address_wait_too(lab: Lab) -> None:
    client = Client(lab.base, source="127.0.0.4")
    for n in range(10):
        assert log_in_form(client, f"ghost_{n}", "x").status == 401
    assert log_in_form(client, "alice", "").status == 429  # any role, from that address
    assert log_in_form(Client(lab.base), "alice", "").status == 303  # not from another
    time.sleep(DELAY + 0.05)
    assert log_in_form(client, "alice", "").status == 303


# --- connections ---------------------------------------------------------------------------


def test_logins_of_one_role_share_its_connections(lab: Lab) -> None:
    clients = [logged_in(lab.base, "bob") for _ in range(12)]
    assert lab.dashboard_connections("bob") <= PER_ROLE
    statuses: list[int] = []

    def read(client: Client) -> None:
        for _ in range(3):
            statuses.append(client.get("/").status)

    threads = [threading.Thread(target=read, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(200) == len(statuses) == 36, statuses
    assert 1 <= lab.dashboard_connections("bob") <= PER_ROLE
    assert lab.dashboard_connections() <= IN_ALL
    # unused, they close; the sessions go on and open one again
    lab.wait_for(lambda: lab.dashboard_connections("bob") == 0)
    assert clients[0].get("/").status == 200
    assert lab.dashboard_connections("bob") == 1


class Locked:
    """``pgml.projects`` locked by a transaction, so pages that read it wait."""

    def __init__(self, server: PostgresCluster) -> None:
        self.conn = psycopg.connect(server.dsn())
        self.conn.execute("LOCK TABLE pgml.projects IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_a_page_waits_for_a_connection_then_answers_503(lab: Lab) -> None:
    alice, bob, carol = (logged_in(lab.base, role) for role in ("alice", "bob", "carol"))
    lab.wait_for(lambda: lab.dashboard_connections() == 0)
    lock = Locked(lab.server)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.get("/").status))
        for c in (alice, alice, bob, bob)
    ]
    try:
        for thread in threads:
            thread.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
            f"'{DASHBOARD}' AND wait_event_type = 'Lock'"
        )
        lab.wait_for(lambda: int(lab.server.psql(waiting)) == IN_ALL)
        for client in (alice, carol):  # the role's cap, then the cap of all roles
            began = time.monotonic()
            busy = client.get("/")
            assert busy.status == 503 and "Busy" in busy.body, busy.body
            assert busy.headers["Retry-After"]
            assert WAIT - 0.1 <= time.monotonic() - began < WAIT + 5
        assert client.get("/loaded").status == 200  # a page without the database
        assert lab.dashboard_connections() == IN_ALL
    finally:
        lock.release()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 4
    assert carol.get("/").status == 200


def test_the_servers_reserved_slots_are_left_alone(lab: Lab) -> None:
    admin = logged_in(lab.base, "postgres")
    lab.wait_for(lambda: lab.dashboard_connections() == 0)
    fillers: list[psycopg.Connection[Any]] = []
    try:
        while True:  # every slot any role may take, taken
            try:
                fillers.append(psycopg.connect(lab.server.dsn("filler"), connect_timeout=5))
            except psycopg.OperationalError as error:
                assert "reserved" in str(error)
                break
            assert len(fillers) < 20
        for reply in (admin.get("/"), log_in_form(Client(lab.base), "postgres", "")):
            assert reply.status == 503, reply.body
            assert lab.dashboard_connections() == 0  # no superuser slot taken
        fillers.pop().close()
        lab.wait_for(lambda: admin.get("/").status == 200)
    finally:
        for conn in fillers:
            conn.close()


def test_free_slots_are_counted_alike_by_any_role(lab: Lab) -> None:
    """A role that sees no other role's processes in detail counts their connections too,
    not the server's own processes (one background worker of a superuser at most)."""
    with (
        psycopg.connect(lab.server.dsn()) as superuser,
        psycopg.connect(lab.server.dsn("filler")) as plain,
    ):
        row = superuser.execute(FREE_SLOTS_SQL).fetchone()
        seen = plain.execute(FREE_SLOTS_SQL).fetchone()
        assert row is not None and seen is not None
        assert 0 <= row[0] - seen[0] <= 1, (row, seen)
        assert row[0] < 15  # of 20 slots, 5 reserved, these two taken


# --- databases and the catalog -------------------------------------------------------------


def test_a_database_the_role_may_not_connect_to_is_not_found(lab: Lab) -> None:
    alice = logged_in(lab.base, "alice")
    refused = alice.get("/?database=nocon")
    missing = alice.get("/?database=no_such_db")
    assert refused.status == missing.status == 404
    assert refused.body.replace("nocon", "X") == missing.body.replace("no_such_db", "X")
    for path in ("/jobs?database=nocon", "/projects/1?database=nocon"):
        assert alice.get(path).status == 404
    assert alice.get("/").status == 200  # the session goes on
    assert not lab.has_catalog("nocon")
    # the superuser may connect: an empty dashboard, and still no catalog made there
    admin = logged_in(lab.base, "postgres")
    page = admin.get("/?database=nocon")
    assert page.status == 200 and 'href="/projects/' not in page.body
    assert not lab.has_catalog("nocon")


def test_a_database_without_the_catalog_shows_an_empty_dashboard(lab: Lab) -> None:
    alice = logged_in(lab.base, "alice")
    assert alice.get("/?database=nocatalog").status == 200
    assert alice.get("/jobs?database=nocatalog").status == 200
    assert alice.get("/projects/1?database=nocatalog").status == 404
    assert alice.get("/models/1?database=nocatalog").status == 404
    token = alice.csrf("/?database=nocatalog")
    deploy = alice.post("/projects/1/deploy?database=nocatalog", {"model_id": "1", "csrf": token})
    assert deploy.status == 404
    cancel = alice.post("/jobs/1/cancel?database=nocatalog", {"csrf": token})
    assert cancel.status == 404
    assert not lab.has_catalog("nocatalog")


def test_without_usage_on_schema_pgml_every_page_is_refused(lab: Lab) -> None:
    """A role without USAGE on schema pgml reads no catalog row through the dashboard:
    each page that reads the catalog answers PostgreSQL's own refusal (403)."""
    carol = logged_in(lab.base, "carol")
    lab.server.psql("REVOKE USAGE ON SCHEMA pgml FROM PUBLIC")
    try:
        token = carol.csrf("/loaded")
        replies = [
            carol.get("/"),
            carol.get("/jobs"),
            carol.get("/projects/1"),
            carol.get("/models/1"),
            carol.post("/projects/1/deploy", {"model_id": "1", "csrf": token}),
            carol.post("/jobs/1/cancel", {"csrf": token}),
        ]
        for reply in replies:
            assert reply.status == 403, reply.body
            assert "permission denied for schema pgml" in reply.body
        assert logged_in(lab.base, "postgres").get("/").status == 200
    finally:
        lab.server.psql("GRANT USAGE ON SCHEMA pgml TO PUBLIC")


# --- /metrics ------------------------------------------------------------------------------


def model_labels(body: str) -> list[dict[str, str]]:
    """The labels of the per-model series of a ``/metrics`` text."""
    return [
        sample.labels
        for family in text_string_to_metric_families(body)
        if family.name in ("pgml_proxy_model_bytes", "pgml_proxy_model_last_used_seconds")
        for sample in family.samples
    ]


def test_metrics_name_no_model_without_a_login(lab: Lab) -> None:
    with psycopg.connect(lab.proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pgml.embed(%s, 'a text')", [MODEL])
    body = Client(lab.base).get("/metrics").body
    labels = model_labels(body)
    assert len(labels) == 2 and all(found["model"] == "all" for found in labels), labels
    assert "MiniLM" not in body and "sentence-transformers" not in body


def test_metrics_name_models_behind_a_login(lab: Lab) -> None:
    port = free_port()
    proxy = ProxyProcess(
        "--upstream",
        lab.server.dsn(),
        "--dashboard-port",
        str(port),
        "--dashboard-metrics-login",
        "true",
        "--dashboard-login-delay",
        str(DELAY),
        env=OFFLINE,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pgml.embed(%s, 'a text')", [MODEL])

        def basic(role: str, password: str) -> Reply:
            secret = base64.b64encode(f"{role}:{password}".encode()).decode()
            request = urllib.request.Request(
                base + "/metrics", headers={"Authorization": f"Basic {secret}"}
            )
            return Client(base)._send(request, follow=True)

        assert Client(base).get("/metrics").status == 401
        shown = basic("scram_user", PASSWORDS["scram_user"])
        assert shown.status == 200
        assert {found["model"] for found in model_labels(shown.body)} == {MODEL}
        for _ in range(3):
            assert basic("md5_user", "wrong").status == 401
        throttled = basic("md5_user", PASSWORDS["md5_user"])
        assert throttled.status == 429 and int(throttled.headers["Retry-After"]) >= 1
    finally:
        proxy.stop()


# --- in a browser --------------------------------------------------------------------------


def test_browser_next_with_a_tab_stays_on_the_dashboard(lab: Lab, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(lab.base + "/login?next=/%09/evil.example/")
    browser.find_element(By.ID, "login-role").send_keys("alice")
    browser.find_element(By.ID, "login-submit").click()
    assert waited(browser, "role").text == "logged in as alice"
    assert browser.current_url == lab.base + "/"


def _left_the_page(element: Any) -> Any:
    """A wait's condition: ``element`` is no longer in the page (a new page has loaded).
    Chromium reports such an element as stale, or, while the new page replaces the old
    one, with an inspector error naming a node that is not in the document."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def gone(_: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" not in str(error):
                raise
            return True
        return False

    return gone


def test_browser_failed_logins_are_slowed_down(lab: Lab, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(lab.base + "/login")
    browser.find_element(By.ID, "login-role").send_keys("plain_user")
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-submit").click()
    assert "Login failed" in waited(browser, "login-error").text
    for _ in range(2):  # two more failures of the role from the browser's address
        assert log_in_form(Client(lab.base), "plain_user", "wrong").status == 401
    first_answer = browser.find_element(By.ID, "login-error")
    browser.find_element(By.ID, "login-password").send_keys(PASSWORDS["plain_user"])
    browser.find_element(By.ID, "login-submit").click()
    WebDriverWait(browser, 30).until(_left_the_page(first_answer))  # the answer's, not the last
    assert "Too many failed logins" in waited(browser, "login-error").text
    assert not browser.get_cookie("pgml_session")
    time.sleep(DELAY)
    browser.find_element(By.ID, "login-password").send_keys(PASSWORDS["plain_user"])
    browser.find_element(By.ID, "login-submit").click()
    assert waited(browser, "role").text == "logged in as plain_user"


def test_browser_a_refused_database_is_not_found(lab: Lab, browser: Any) -> None:
    browser_log_in(browser, lab.base, "alice")
    browser.get(lab.base + "/?database=nocon")
    assert browser.title.startswith("Not found")
    browser.get(lab.base + "/")
    assert waited(browser, "role").text == "logged in as alice"
    assert not lab.has_catalog("nocon")
