"""Rows planned by handlers.datasets go into a real PostgreSQL with COPY and come back intact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from handlers.datasets import plan_dataset
from handlers.files import FileRights
from tests.support.pgserver import BIN, PostgresCluster

TRICKY = [
    "\\N",
    "\\",
    "back\\slash",
    "tab\there",
    "cr\rlf\nend",
    "",
    " ",
    "naïve ☃ \U0001f600",
    "\\\\n",
    "quote ' and \" and ,",
]


def copy_in(cluster: PostgresCluster, table: str, data: bytes) -> None:
    subprocess.run(
        [
            str(BIN / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(cluster.socket_dir),
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "-c",
            f"\\copy {table} from pstdin",
        ],
        input=data,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_copy_round_trip(
    cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows: list[dict[str, Any]] = [
        {
            "id": i,
            "s": s,
            "f": i / 3,
            "b": i % 2 == 0,
            "j": {"s": s, "l": [s, s], "i": i, "n": None},
        }
        for i, s in enumerate(TRICKY)
    ]
    rows.append({"id": len(TRICKY), "s": None, "f": None, "b": None, "j": None})
    rows.append(
        {
            "id": len(TRICKY) + 1,
            "s": "x" * 5_000_000,
            "f": 1e300,
            "b": True,
            "j": {"s": "", "l": [], "i": 0, "n": None},
        }
    )
    path = tmp_path / "tricky_copy.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")

    plan = plan_dataset(str(path), None, None, {}, None, FileRights(anywhere=True))
    assert plan.columns == [
        ("id", "BIGINT"),
        ("s", "TEXT"),
        ("f", "DOUBLE PRECISION"),
        ("b", "BOOLEAN"),
        ("j", "JSONB"),
    ]
    table = f'public."{plan.table_name}"'
    columns = ", ".join(f'"{name}" {pg_type}' for name, pg_type in plan.columns)
    cluster.psql(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})")
    copy_in(cluster, table, b"".join(plan.rows(batch_rows=3)))

    out = cluster.psql(
        f"SELECT json_agg(json_build_object('id', id, 's', s, 'f', f, 'b', b, 'j', j)"
        f" ORDER BY id) FROM {table}"
    )
    back = json.loads(out)
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        assert got == want
    cluster.psql(f"DROP TABLE {table}")
