"""The parts of parameter-efficient and large-table tuning that need no server: the snapshot
file written from COPY's CSV, the trained-model manifest, the adapter options and their
checks against real (tiny) models, the LoRA defaults per architecture, and how a failed
training process is described."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import handlers.tuning
from handlers.artifact import ADAPTER, FULL, Manifest, fingerprint, hub_revision
from handlers.errors import PgmlError
from handlers.tuning.adapters import (
    check_adapter_options,
    count_parameters,
    lora_config,
    new_modules,
)
from handlers.tuning.failures import sqlstate_of
from handlers.tuning.launch import rank_log
from handlers.tuning.options import TuneOptions, parse_hyperparams, training_argument_names
from handlers.tuning.runner import _worker_error, launch_command, launch_environment
from handlers.tuning.snapshot import SnapshotWriter


def raises(sqlstate: str, call: Callable[[], Any]) -> PgmlError:
    with pytest.raises(PgmlError) as raised:
        call()
    assert raised.value.sqlstate == sqlstate, raised.value.message
    return raised.value


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import build_models_dir

    return build_models_dir(tmp_path_factory.mktemp("models"))


# --- the snapshot file ---------------------------------------------------------------------

# PostgreSQL's CSV: NULL unquoted and empty, an empty string "", quotes doubled, values with
# a comma, a quote or a newline quoted; one CopyData a row.
COPY_ROWS = [
    b"plain text,1\n",
    b'"with, a comma",0\n',
    b'"two\nlines and ""quotes""",1\n',
    b",1\n",
    b'"",0\n',
    b"NULL,NULL\n",
    b"caf\xc3\xa9 \xe2\x98\x95,\n",
]


def test_snapshot_writer_reads_postgresql_csv(tmp_path: Path) -> None:
    from datasets import Dataset

    writer = SnapshotWriter(tmp_path / "s.arrow", ["x", "y"], collect_labels=True)
    writer.write(b"".join(COPY_ROWS[:3]))
    writer.write(b"".join(COPY_ROWS[3:]))
    writer.close()
    assert writer.rows == 7
    assert writer.nulls == [1, 1]
    assert writer.labels == {"0", "1", "NULL"}
    assert writer.checksum == "sha256:" + hashlib.sha256(b"".join(COPY_ROWS)).hexdigest()
    data = Dataset.from_file(str(tmp_path / "s.arrow"))  # memory-mapped, as the worker opens it
    assert data["x"] == [
        "plain text",
        "with, a comma",
        'two\nlines and "quotes"',
        None,
        "",
        "NULL",
        "café ☕",
    ]
    assert data["y"] == ["1", "0", "1", "1", "0", "NULL", None]


def test_snapshot_writer_checksum_does_not_depend_on_batches(tmp_path: Path) -> None:
    one = SnapshotWriter(tmp_path / "a.arrow", ["x", "y"], collect_labels=False)
    one.write(b"".join(COPY_ROWS))
    one.close()
    many = SnapshotWriter(tmp_path / "b.arrow", ["x", "y"], collect_labels=False)
    for row in COPY_ROWS:
        many.write(row)
    many.close()
    assert one.checksum == many.checksum
    assert one.rows == many.rows == len(COPY_ROWS)
    assert many.labels == set()  # not collected


def test_snapshot_writer_takes_a_row_longer_than_a_block(tmp_path: Path) -> None:
    from datasets import Dataset

    long = "word " * 400_000  # 2 MB in one value
    writer = SnapshotWriter(tmp_path / "s.arrow", ["y"], collect_labels=False)
    writer.write(f'"{long}"\nshort\n'.encode())
    writer.close()
    assert Dataset.from_file(str(tmp_path / "s.arrow"))["y"] == [long, "short"]


# --- the manifest ---------------------------------------------------------------------------


def test_manifest_round_trip_and_older_manifests(tmp_path: Path) -> None:
    written = Manifest(
        "text-classification",
        256,
        64,
        ["neg", "pos"],
        "text",
        kind=ADAPTER,
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        base_fingerprint="sha256:abc",
        trainable_parameters=10,
        total_parameters=1000,
    )
    written.write(tmp_path)
    assert Manifest.read(tmp_path) == written
    assert Manifest.read(tmp_path).is_adapter
    # a manifest written before adapters existed: a whole model
    (tmp_path / "pgml.json").write_text(json.dumps({"task": "translation", "extra": 1}))
    old = Manifest.read(tmp_path)
    assert (old.kind, old.max_input_length, old.max_target_length) == (FULL, 512, 128)
    assert not old.is_adapter


def test_fingerprint_follows_config_and_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 32}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "README.md").write_text("not part of the model")
    first = fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("changed")
    assert fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert fingerprint(tmp_path) != first
    assert hub_revision(tmp_path) is None
    snapshot = tmp_path / "hub" / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    assert hub_revision(snapshot) == "ab" * 20


# --- adapter options ------------------------------------------------------------------------


def options(task: str, value: dict[str, Any]) -> TuneOptions:
    return parse_hyperparams(task, value, training_argument_names(task))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"lora_config": [1]}, "lora_config must be a JSON object"),
        ({"lora_config": "r=8"}, "lora_config must be a JSON object"),
        ({"load_in_4bit": True}, "load_in_4bit needs lora_config"),
        ({"merge_adapter": True}, "merge_adapter needs lora_config"),
        ({"load_in_4bit": "yes", "lora_config": {}}, '"load_in_4bit" must be a boolean'),
        ({"merge_adapter": 1, "lora_config": {}}, '"merge_adapter" must be a boolean'),
        (
            {"load_in_4bit": True, "load_in_8bit": True, "lora_config": {}},
            "exclude each other",
        ),
    ],
)
def test_adapter_options_refused(value: dict[str, Any], shown: str) -> None:
    error = raises("22023", lambda: options("text-generation", value))
    assert shown in error.message


def test_adapter_options_parsed_and_stored_without_secrets() -> None:
    found = options(
        "text-generation",
        {
            "learning_rate": 1e-3,
            "lora_config": {"r": 4, "api_key": "secret"},
            "load_in_8bit": True,
            "load_in_4bit": False,
            "merge_adapter": True,
        },
    )
    assert found.lora == {"r": 4, "api_key": "secret"}  # the worker gets all of it
    assert (found.quantization, found.merge_adapter) == ("8bit", True)
    assert found.training == {"learning_rate": 1e-3}
    assert found.stored == {
        "learning_rate": 1e-3,
        "lora_config": {"r": 4},
        "load_in_8bit": True,
        "merge_adapter": True,
    }
    assert options("text-generation", {}).lora is None


@pytest.mark.parametrize(
    ("lora", "shown"),
    [
        ({"rr": 8}, 'unknown lora_config key "rr"'),
        ({"r": "8"}, 'lora_config key "r" must be an integer, not "8"'),
        ({"r": 0}, "r must be at least 1"),
        ({"lora_alpha": -2}, "lora_alpha must be positive"),
        ({"lora_dropout": 1.5}, "lora_dropout must be at least 0 and below 1"),
        ({"bias": "sometimes"}, '"bias" must be one of "none", "all", "lora_only"'),
        ({"target_modules": 7}, '"target_modules" must be'),
        ({"target_modules": ["no_such_layer"]}, '"no_such_layer" is not a module of gpt2'),
        ({"task_type": "SEQ_CLS"}, '"task_type" is chosen by pgml-proxy'),
        ({"base_model_name_or_path": "x"}, "is chosen by pgml-proxy"),
    ],
)
def test_bad_lora_config_is_refused(models: Path, lora: dict[str, Any], shown: str) -> None:
    found = options("text-generation", {"lora_config": lora})
    error = raises("22023", lambda: check_adapter_options(found, models / "gpt2", "cpu"))
    assert shown in error.message


def test_unknown_lora_key_lists_the_keys(models: Path) -> None:
    found = options("translation", {"lora_config": {"rank": 8}})
    error = raises(
        "22023",
        lambda: check_adapter_options(found, models / "Helsinki-NLP/opus-mt-en-es", "cpu"),
    )
    assert error.detail is not None
    assert "lora_alpha" in error.detail and "target_modules" in error.detail
    assert "task_type" not in error.detail


@pytest.mark.parametrize("key", ["load_in_4bit", "load_in_8bit"])
def test_quantisation_needs_cuda(models: Path, key: str) -> None:
    found = options("text-generation", {key: True, "lora_config": {}})
    error = raises("0A000", lambda: check_adapter_options(found, models / "gpt2", "cpu"))
    assert "CUDA" in error.message and "cpu" in error.message
    assert error.hint is not None and key in error.hint


@pytest.mark.parametrize(
    "lora", [{}, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "bias": "lora_only"}]
)
def test_good_lora_config_passes(models: Path, lora: dict[str, Any]) -> None:
    check_adapter_options(options("text-generation", {"lora_config": lora}), models / "gpt2", "cpu")


# --- LoRA defaults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "name", "targets"),
    [
        ("text-generation", "gpt2", {"c_attn"}),  # PEFT's own mapping
        ("translation", "Helsinki-NLP/opus-mt-en-es", {"q_proj", "v_proj"}),  # pgml-proxy's
        ("summarization", "sshleifer/distilbart-xsum-12-1", {"q_proj", "v_proj"}),
        ("text-classification", "distilbert-base-uncased", {"q_lin", "v_lin"}),
    ],
)
def test_lora_defaults_per_architecture(
    models: Path, task: str, name: str, targets: set[str]
) -> None:
    from peft import get_peft_model

    from handlers.artifact import model_class

    extra = {"num_labels": 2} if task == "text-classification" else {}
    model, info = model_class(task).from_pretrained(
        models / name, output_loading_info=True, **extra
    )
    fresh = new_modules(info["missing_keys"])
    config = lora_config(task, {"r": 4}, model, fresh)
    assert set(config.target_modules) == targets
    assert config.r == 4
    adapted = get_peft_model(model, config)
    trainable, total = count_parameters(adapted)
    assert 0 < trainable < total / 4
    if task == "text-classification":
        # the new head (DistilBERT's pre_classifier and classifier) is trained whole
        assert fresh == {"pre_classifier", "classifier"}
        assert set(config.modules_to_save or []) >= fresh
        assert config.task_type == "SEQ_CLS"


def test_lora_defaults_fall_back_to_every_linear_layer() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    model.config.model_type = "an-architecture-nobody-mapped"
    config = lora_config("text-classification", {}, model, {"classifier"})
    assert config.target_modules == "all-linear"
    assert set(config.exclude_modules) == {"classifier"}
    assert set(config.modules_to_save) == {"classifier"}


# --- the launcher ---------------------------------------------------------------------------


def test_launch_command_and_environment() -> None:
    command = launch_command(Path("/w/job.json"), 3)
    assert command[1:3] == ["-m", "handlers.tuning.launch"]
    assert "--standalone" in command and "--nproc-per-node=3" in command
    assert command[-3:] == ["-m", "handlers.tuning.worker", "/w/job.json"]
    assert launch_environment("cuda:2")["CUDA_VISIBLE_DEVICES"] == "2"
    import os

    assert launch_environment("cuda").get("CUDA_VISIBLE_DEVICES") == os.environ.get(
        "CUDA_VISIBLE_DEVICES"
    )
    assert launch_environment("cpu")["TOKENIZERS_PARALLELISM"] == "false"


def test_a_killed_process_is_the_cause_not_what_its_peers_then_said() -> None:
    from collections import deque

    peer = {"kind": "RuntimeError", "message": "Connection closed by peer"}
    killed = {"kind": "RankFailed", "rank": 1, "exitcode": -9}
    exited = {"kind": "RankFailed", "rank": 0, "exitcode": 1}
    error = _worker_error(1, [peer, exited, killed], deque(), 2)
    assert error.message == "training process 1 of 2 was killed by signal 9 (SIGKILL)"
    # the launcher itself killed: its workers' errors are consequences
    error = _worker_error(-9, [peer], deque(), 2)
    assert error.message == "the training worker was killed by signal 9 (SIGKILL)"
    # a worker's own exception beats the exit status it caused
    error = _worker_error(1, [exited, peer], deque(), 2)
    assert error.message == "training failed: RuntimeError: Connection closed by peer"
    # the launcher stops the other ranks with SIGTERM once one has failed
    stopped = {"kind": "RankFailed", "rank": 0, "exitcode": -15}
    for failures in ([stopped, killed], [stopped, peer], [stopped, exited]):
        error = _worker_error(1, failures, deque(), 2)
        assert "SIGTERM" not in error.message, (failures, error.message)
    error = _worker_error(1, [stopped], deque(), 2)
    assert error.message == "training process 0 of 2 was killed by signal 15 (SIGTERM)"


def test_an_abort_is_told_however_long_the_stacks_after_it(tmp_path: Path) -> None:
    """faulthandler writes the fatal error's line first, then the stack of the thread it
    stopped (or of every thread): far more than the last few dozen lines of the rank's log."""
    from collections import deque

    from handlers.tuning.launch import rank_log

    job = tmp_path / "job.json"
    stacks = []
    for thread in range(12):
        stacks += [f"Thread 0x{thread:016x} (most recent call first):"]
        stacks += [f'  File "/x/m{n}.py", line {n} in f{n}' for n in range(20)]
        stacks += [""]
    own = ["Stack (most recent call first):", '  File "/x/t.py", line 9 in train', ""]
    lines = ["step 3 of 80", "Fatal Python error: Aborted", "", *own, *stacks]
    lines += ["Extension modules: a, b"]
    rank_log(job, 1).write_text("\n".join(lines) + "\n")
    killed = {"kind": "RankFailed", "rank": 1, "exitcode": -6}
    error = _worker_error(1, [killed], deque(), 2, job)
    assert error.message == "training process 1 of 2 was killed by signal 6 (SIGABRT)"
    assert error.detail == "step 3 of 80\nFatal Python error: Aborted"


@pytest.mark.parametrize(
    ("code", "failure", "processes", "shown", "sqlstate"),
    [
        (-9, None, 1, "the training worker was killed by signal 9 (SIGKILL)", "58000"),
        (3, None, 1, "the training worker exited with status 3", "58000"),
        (
            1,
            {"kind": "RankFailed", "rank": 1, "exitcode": -9},
            2,
            "training process 1 of 2 was killed by signal 9 (SIGKILL)",
            "58000",
        ),
        (
            1,
            {"kind": "RankFailed", "rank": 0, "exitcode": -6},
            1,
            "the training worker was killed by signal 6 (SIGABRT)",
            "58000",
        ),
        (
            1,
            {"kind": "RankFailed", "rank": 0, "exitcode": 2},
            4,
            "training process 0 of 4 exited with status 2",
            "58000",
        ),
        (
            1,
            {"kind": "ValueError", "message": "bad"},
            2,
            "training failed: ValueError: bad",
            "XX000",
        ),
        (
            1,
            {"kind": "TypeError", "message": "unexpected keyword", "sqlstate": "22023"},
            1,
            "training failed: TypeError: unexpected keyword",
            "22023",
        ),
        (
            1,
            {"kind": "OutOfMemoryError", "message": "CUDA out of memory", "sqlstate": "53200"},
            1,
            "training failed: OutOfMemoryError: CUDA out of memory",
            "53200",
        ),
    ],
)
def test_worker_errors(
    code: int, failure: dict[str, Any] | None, processes: int, shown: str, sqlstate: str
) -> None:
    from collections import deque

    error = _worker_error(code, [] if failure is None else [failure], deque(), processes)
    assert error.sqlstate == sqlstate
    assert error.message == shown
    if "SIGKILL" in shown:
        assert error.hint is not None and "out-of-memory" in error.hint
    if "SIGABRT" in shown:
        assert error.hint is not None and "aborted" in error.hint and "memory" not in error.hint


def test_a_failed_process_is_told_with_its_own_last_lines(tmp_path: Path) -> None:
    """The DETAIL is the failed rank's own last lines, not its peers', without a
    traceback's frames; the launcher's output stands in when no rank is to blame."""
    from collections import deque

    job_file = tmp_path / "job.json"
    rank_log(job_file, 0).write_text("rank 0 was fine\n")
    threads = "".join(
        f"Thread 0x00007f{n:02x} (most recent call first):\n"
        f'  File "/x/threading.py", line {n} in wait\n'
        for n in range(8)
    )
    rank_log(job_file, 1).write_text(
        "step 3\nterminate called after throwing an instance of 'gloo::IoException'\n"
        "Fatal Python error: Aborted\n\n" + threads + "\nCurrent thread 0x00007f99 (most "
        'recent call first):\n  File "/x/trainer.py", line 9 in train\n\n'
        "Extension modules: numpy, torch._C (total: 2)\n"
    )
    killed = {"kind": "RankFailed", "rank": 1, "exitcode": -6}
    error = _worker_error(1, [killed], deque(["launcher line"]), 2, job_file)
    assert error.message == "training process 1 of 2 was killed by signal 6 (SIGABRT)"
    assert error.detail == (
        "step 3\nterminate called after throwing an instance of 'gloo::IoException'\n"
        "Fatal Python error: Aborted"
    )
    raised = {"kind": "ValueError", "message": "bad", "rank": 0}
    assert _worker_error(1, [raised], deque(), 2, job_file).detail == "rank 0 was fine"
    launcher = _worker_error(-9, [], deque(["Traceback (most recent call last):", "  x", "E"]), 2)
    assert launcher.detail == "E"
    missing = {"kind": "RankFailed", "rank": 3, "exitcode": -9}
    assert _worker_error(1, [missing], deque(), 4, job_file).detail is None


# --- distributed settings pass through ------------------------------------------------------


def test_fsdp_settings_pass_through_unchanged() -> None:
    from handlers.files import FileRights
    from handlers.tuning.tune import _check_training_arguments

    value = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"min_num_params": 1000}}
    found = options("text-classification", value)
    _check_training_arguments(found, "cpu", FileRights())
    assert found.training == value  # checked on a copy: TrainingArguments fills it in
    assert found.stored == value


def test_deepspeed_needs_its_package() -> None:
    import importlib.util

    from handlers.files import FileRights
    from handlers.tuning.tune import _check_training_arguments

    found = options("text-classification", {"deepspeed": {"zero_optimization": {"stage": 2}}})
    if importlib.util.find_spec("deepspeed") is not None:
        _check_training_arguments(found, "cpu", FileRights())  # installed: the settings are valid
        return
    error = raises("0A000", lambda: _check_training_arguments(found, "cpu", FileRights()))
    assert "deepspeed" in error.message


def _raised_in(filename: str, error: Exception) -> Exception:
    """``error`` as raised by code in ``filename``."""
    scope: dict[str, Any] = {}
    exec(compile("def fail(e):\n    raise e\n", filename, "exec"), scope)
    try:
        scope["fail"](error)
    except Exception as raised:
        return raised
    raise AssertionError("not raised")


def _raised_in_a_library(error: Exception) -> Exception:
    return _raised_in("/venv/site-packages/transformers/trainer.py", error)


def _raised_in_the_proxy(error: Exception) -> Exception:
    return _raised_in(str(Path(handlers.tuning.__file__).parent / "training.py"), error)


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [
        (_raised_in_a_library(TypeError("unexpected keyword argument 'nope'")), "22023"),
        (_raised_in_a_library(ValueError("fp16 needs a GPU")), "22023"),
        (_raised_in_a_library(ValueError("Column 'label' not in the dataset")), "42703"),
        (_raised_in_a_library(KeyError("column text is missing")), "42703"),
        (_raised_in_a_library(PermissionError("denied")), "42501"),
        (_raised_in_a_library(MemoryError()), "53200"),
        (_raised_in_a_library(NotImplementedError("no")), "0A000"),
        (_raised_in_a_library(FileNotFoundError("gone")), "58P01"),
        (_raised_in_a_library(ModuleNotFoundError("bitsandbytes")), "0A000"),
        (_raised_in_a_library(OSError("disk full")), "58030"),
        (_raised_in_a_library(RuntimeError("Connection closed by peer")), "58000"),
        (_raised_in_the_proxy(PgmlError("22P02", "bad")), "22P02"),
        (_raised_in_the_proxy(TypeError("a bug")), "XX000"),
        (_raised_in_the_proxy(KeyError("task")), "XX000"),
        (_raised_in_a_library(KeyError("task")), "XX000"),
    ],
)
def test_a_workers_exception_has_a_fitting_sqlstate(error: Exception, sqlstate: str) -> None:
    assert sqlstate_of(error) == sqlstate
