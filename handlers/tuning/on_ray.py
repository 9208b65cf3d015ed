"""Training on a Ray cluster: ``python -m handlers.tuning.on_ray --address ADDRESS
--workers N [--gpus-per-worker G] JOB_FILE``, started by the proxy in place of
:mod:`handlers.tuning.launch` when ``--ray-address`` is set.

This process is the Ray driver.  It puts the base model's files and the snapshot into
Ray's object store (so the workers need no path of the proxy's machine), and runs Ray
Train's ``TorchTrainer``: N workers, each with the process group Ray sets up, run the same
:func:`handlers.tuning.training.train` (Hugging Face's ``Trainer``, data-parallel) on
their own copy.  Rank 0's progress comes back through a Ray queue and is printed as the
local launcher's workers print it, one JSON object a line, so the proxy relays it the
same way; rank 0's trained files come back through the object store into the job's
``output_dir``.  The ``handlers`` package travels to the cluster with the job
(``runtime_env`` ``py_modules``); the cluster's Python needs the packages training needs.

When the proxy stops this process (a cancel) or is gone, the driver ends and Ray ends
the actors it owns, the training workers among them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

from handlers.tuning.launch import end_with_parent

SYSTEM_ERROR = "58000"
NOT_SUPPORTED = "0A000"
CONNECT_SECONDS = 20.0
"""How long the driver waits for the cluster to answer before the call fails."""
LOST_SECONDS = 10
"""How long the driver tries to reach a cluster that stopped answering mid-training."""
FILES_WAIT_SECONDS = 600.0
"""How long rank 0 waits for the driver to take the trained files."""
HANDLERS = Path(__file__).resolve().parents[1]


def pack(folder: Path) -> bytes:
    """A folder as an uncompressed tar (model weights do not compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


def _error(kind: str, message: str, sqlstate: str = SYSTEM_ERROR) -> dict[str, Any]:
    return {"event": "error", "kind": kind, "message": message, "sqlstate": sqlstate, "rank": 0}


def worker_loop(config: dict[str, Any]) -> None:
    """One training worker: the job on its own copy of the model and the snapshot."""
    import ray
    import ray.train

    from handlers.tuning.failures import sqlstate_of
    from handlers.tuning.training import Job, train

    rank = ray.train.get_context().get_world_rank()
    events, taken = config["events"], config["taken"]
    local = Path(tempfile.mkdtemp(prefix="pgml-ray-"))
    try:
        unpack(ray.get(config["model"]), local / "base")
        data_file = local / "snapshot.arrow"
        data_file.write_bytes(ray.get(config["snapshot"]))
        job = Job(
            **config["job"]
            | {
                "model_path": str(local / "base"),
                "data_file": str(data_file),
                "output_dir": str(local / "out"),
                "device": "cuda" if config["gpus"] else "cpu",
            }
        )

        sent: list[Any] = []

        def emit(**event: Any) -> None:
            """Queued without waiting (a round trip a step would slow every rank down, as
            they wait for rank 0 at each step); the queue keeps one sender's order."""
            if rank == 0 or event.get("event") == "error":
                sent.append(
                    events.actor.put_nowait.remote(json.loads(json.dumps(event, default=str)))
                )

        try:
            outcome = train(job, emit)
        except Exception as exc:
            traceback.print_exc()
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            kind = type(exc).__name__
            emit(event="error", kind=kind, message=lines[0], sqlstate=sqlstate_of(exc), rank=rank)
            ray.get(sent)
            raise
        ray.get(sent)
        if rank == 0:  # the driver takes the files before this worker (their owner) ends
            events.put({"event": "files", "files": ray.put(pack(local / "out" / "model"))})
            taken.get(timeout=FILES_WAIT_SECONDS)
            events.put({"event": "done", **json.loads(json.dumps(outcome, default=str))})
    finally:
        shutil.rmtree(local, ignore_errors=True)


class Relay:
    """Prints rank 0's events as they come; unpacks the trained files on their event."""

    def __init__(self, events: Any, taken: Any, output_dir: Path) -> None:
        self.events, self.taken, self.output_dir = events, taken, output_dir
        self.stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="ray-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                event = self.events.get(timeout=0.2)
            except Empty:
                if self.stop.is_set():
                    return
                continue
            except Exception:  # the queue is gone with the cluster: fit() says how
                return
            if event.get("event") == "files":
                import ray

                unpack(ray.get(event["files"]), self.output_dir / "model")
                self.taken.put(True)
                continue
            if event.get("event") == "error":
                self.errors += 1
            print(json.dumps(event), flush=True)

    def finish(self) -> None:
        self.stop.set()
        self._thread.join()


def main(argv: list[str]) -> int:
    end_with_parent()
    parser = argparse.ArgumentParser(prog="handlers.tuning.on_ray")
    parser.add_argument("--address", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("job_file", type=Path)
    args = parser.parse_args(argv)
    job = json.loads(args.job_file.read_text("utf-8"))
    # a cluster lost mid-training ends this driver (and so the call) after this long
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(LOST_SECONDS))

    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue
    except ImportError as exc:  # --ray-address without the extra
        message = f"Ray is not installed here ({exc}): pip install 'pgml-proxy[ray]'"
        print(json.dumps(_error(type(exc).__name__, message, NOT_SUPPORTED)), flush=True)
        return 1

    def unreachable(why: object) -> None:
        message = f"could not reach the Ray cluster at {args.address}: {why}"
        print(json.dumps(_error("RayClusterUnreachable", message.splitlines()[0])), flush=True)

    def give_up() -> None:  # ray.init retries an address where no cluster answers
        unreachable(f"no answer in {CONNECT_SECONDS:.0f} s")
        os._exit(1)

    watchdog = threading.Timer(CONNECT_SECONDS, give_up)
    watchdog.start()
    try:
        ray.init(
            address=args.address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"py_modules": [str(HANDLERS)]},
        )
    except Exception as exc:  # the cluster is not there: the call fails, nothing trained
        unreachable(exc)
        return 1
    finally:
        watchdog.cancel()
    storage = Path(tempfile.mkdtemp(prefix="pgml-ray-run-"))
    events, taken = Queue(), Queue()
    relay = Relay(events, taken, Path(job["output_dir"]))
    try:
        gpus = args.gpus_per_worker
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={
                "job": job,
                "model": ray.put(pack(Path(job["model_path"]))),
                "snapshot": ray.put(Path(job["data_file"]).read_bytes()),
                "events": events,
                "taken": taken,
                "gpus": gpus,
            },
            scaling_config=ScalingConfig(
                num_workers=args.workers,
                use_gpu=gpus > 0,
                resources_per_worker={"CPU": 1, **({"GPU": gpus} if gpus else {})},
            ),
            run_config=RunConfig(
                storage_path=str(storage),
                name=args.job_file.parent.name,
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        trainer.fit()
    except Exception as exc:
        relay.finish()
        if relay.errors == 0:  # not a worker's own exception, already reported: a lost one
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            message = f"on the Ray cluster at {args.address}: {lines[0]}"
            print(json.dumps(_error(type(exc).__name__, message)), flush=True)
        traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    relay.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
