# Sourced by run.sh and test.sh: create .venv and install the project into it.
# PGML_PROXY_EXTRAS names the optional dependency groups to add (e.g. "test").
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "pgml-proxy needs Python 3.11 or newer ($python is $("$python" -V 2>&1))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
spec="."
[ -n "${PGML_PROXY_EXTRAS:-}" ] && spec=".[${PGML_PROXY_EXTRAS}]"
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${PGML_PROXY_EXTRAS:-base}"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    touch "$stamp"
fi
