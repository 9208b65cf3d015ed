import subprocess

from tests.support.proxyproc import ProxyProcess


def test_psql_through_proxy(proxy: ProxyProcess) -> None:
    out = subprocess.run(
        ["psql", "-X", "-At", proxy.dsn(), "-c", "select 40 + 2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"
