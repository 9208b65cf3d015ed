"""pgml-proxy: a PostgreSQL wire-protocol proxy that runs pgml functions itself."""

__version__ = "0.1.0"
