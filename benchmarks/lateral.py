"""A call in FROM over the columns of the items before it, against the same chunks asked
in the select list of a subquery (the form the proxy reads the first as, written out).

    FROM t, pgml.chunk('character', t.body, ...) AS c
    FROM (SELECT id, pgml.chunk('character', body, ...) AS c FROM t) AS d

Both through the proxy, interleaved, in a read-write transaction (the rows materialised
in temporary tables) and in a READ ONLY one (carried through the proxy); the ratio is
the select-list form's time over the FROM form's.

    .venv/bin/python benchmarks/lateral.py --rows 20000 --distinct 500 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.texts import texts_and_proxy, timed  # noqa: E402

OPTIONS = '{"chunk_size": 12, "chunk_overlap": 0, "separator": " "}'
IN_FROM = (
    f"SELECT count(*), sum(length(c.chunk)) FROM t, pgml.chunk('character', t.body, '{OPTIONS}') c"
)
IN_SELECT_LIST = (
    "SELECT count(*), sum(length((d.c).chunk)) FROM (SELECT id, "
    f"pgml.chunk('character', body, '{OPTIONS}') AS c FROM t) AS d"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with texts_and_proxy(args.rows, args.distinct, "lateral") as proxy:
        for begin in ("BEGIN", "BEGIN READ ONLY"):
            times: dict[str, list[float]] = {"in FROM": [], "in a select list": []}
            answers = set()
            for sql in (IN_FROM, IN_SELECT_LIST):  # warmed up: the splitter, the plans
                timed(proxy.dsn(), sql, begin)
            for _ in range(args.rounds):
                for name, sql in (("in FROM", IN_FROM), ("in a select list", IN_SELECT_LIST)):
                    answer, took = timed(proxy.dsn(), sql, begin)
                    answers.add(answer)
                    times[name].append(took)
            assert len(answers) == 1, answers  # the same chunks either way
            medians = {name: statistics.median(t) for name, t in times.items()}
            ratio = medians["in a select list"] / medians["in FROM"]
            print(f"{begin}: chunks {answers.pop()[0]:,}")
            for name, median in medians.items():
                rounds = ", ".join(f"{t:.2f}" for t in times[name])
                print(f"  {name:>17}: {median:.2f} s median ({rounds})")
            print(f"  ratio (select list / FROM): {ratio:.3f}")


if __name__ == "__main__":
    main()
