"""Every CLI error is one line on stderr and a non-zero exit, no traceback (unless --verbose).

These run the real `nearline` entry point as a subprocess; "dead" endpoints are free local ports with
nothing listening (no servers are started)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nearline import REPO_ROOT
from nearline.ops.procs import free_port


def nearline(*args, cwd: Path, env: dict | None = None, timeout: float = 60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("NEARLINE_")}
    e.update(env or {})
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "nearline.cli", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=e)
    return res, time.monotonic() - t0


def one_line_error(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0, res
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nearline: error: ") and "Traceback" not in res.stderr
    return lines[0]


def dead_endpoints() -> dict:
    return {"NEARLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "NEARLINE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


@pytest.mark.parametrize("yaml_text, expected", [
    ("topics:\n  partitons: 4\n", "unknown key(s) ['partitons']"),
    ("topics:\n  partitions: four\n", "topics.partitions: expected int, got 'four'"),
    ("join:\n  timeout_policy: maybe\n", "join.timeout_policy must be 'partial' or 'dead_letter'"),
    ("kafka: [1\n", "not valid YAML at line 2"),
    ("topics: 5\n", "expected a mapping"),
])
def test_config_errors_are_one_line(tmp_path, yaml_text, expected):
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml_text)
    res, _ = nearline("--config", str(conf), "services", "status", cwd=tmp_path)
    assert expected in one_line_error(res)
    assert res.returncode == 2


def test_missing_config_file_is_an_error_not_defaults(tmp_path):
    res, _ = nearline("--config", "nope.yaml", "services", "status", cwd=tmp_path)
    assert "config file nope.yaml not found" in one_line_error(res)
    res, _ = nearline("services", "status", cwd=tmp_path, env={"NEARLINE_CONFIG": str(tmp_path / "gone.yaml")})
    assert "gone.yaml not found" in one_line_error(res)


def test_missing_marketplace_names_the_fix(tmp_path):
    res, _ = nearline("marketplace", "stream", "--out", str(tmp_path / "none"), cwd=tmp_path, env=dead_endpoints())
    assert "run `nearline marketplace generate` first" in one_line_error(res)


def test_wrong_train_config(tmp_path):
    res, _ = nearline("train", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert "training config" in one_line_error(res) and res.returncode == 2
    res, _ = nearline("train", "--config", str(REPO_ROOT / "nearline.yaml"), cwd=tmp_path, timeout=120)
    line = one_line_error(res)
    assert "is not a valid training config" in line or "train extra" in line


@pytest.mark.parametrize("command", [["tail", "--max", "3"], ["run"], ["standardize", "--processor", "title"]])
def test_dead_broker_reported_in_seconds_naming_the_endpoint(tmp_path, command):
    env = dead_endpoints()
    res, took = nearline(*command, cwd=tmp_path, env=env)
    line = one_line_error(res)
    assert f"Kafka at {env['NEARLINE_KAFKA_BOOTSTRAP']} is not reachable" in line
    assert took < 15, took  # 3 s probe + interpreter and Beam import


def test_dead_redis_reported_naming_the_endpoint(tmp_path):
    env = dead_endpoints()
    res, took = nearline("get", "member", "m1", cwd=tmp_path, env=env)
    assert f"Redis at {env['NEARLINE_REDIS_URL']} is not reachable" in one_line_error(res)
    assert took < 10


def test_no_endpoints_and_unknown_entity_type(tmp_path):
    (tmp_path / "nearline.yaml").write_text("entity_types: [member, job]\n")  # state_dir: tmp_path/.nearline
    res, _ = nearline("get", "member", "m1", cwd=tmp_path)  # no services.json there, no env endpoints
    assert "nearline services up" in one_line_error(res)
    res, _ = nearline("get", "memb", "m1", cwd=tmp_path, env=dead_endpoints())
    assert "unknown entity type 'memb'" in one_line_error(res)


def test_verbose_shows_the_traceback(tmp_path):
    res, _ = nearline("get", "member", "m1", "--verbose", cwd=tmp_path, env=dead_endpoints())
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("nearline: error: Redis at")


def test_unexpected_errors_are_one_line_too():
    from nearline.cli import describe_error

    msg, code = describe_error(ZeroDivisionError("division by zero\nsecond line"))
    assert msg == "ZeroDivisionError: division by zero second line (unexpected; run with --verbose for the traceback)"
    assert code == 1
    msg, _ = describe_error(RuntimeError("Pipeline failed: " + "frame\n" * 500 + "ValueError: the real cause"))
    assert len(msg) < 700 and msg.startswith("RuntimeError: Pipeline failed") and "the real cause" in msg


def test_a_model_that_fails_at_run_time_is_one_line_without_onnxruntime_noise(tmp_path):
    """`models check` / `models register` of a package whose graph fails when run (its manifest promises a
    larger vocabulary than the graph's table): the project's one line, and nothing of onnxruntime's own
    (coloured) error log on stderr."""
    import json

    from tests.helpers import make_package

    pkg = make_package(tmp_path / "pk", "member_bad", "v1", "member", seed=1)
    man = json.loads((pkg / "manifest.json").read_text())
    for f in man["inputs"]:
        if f["name"] == "title":
            f["vocab_size"] = 100_000
    (pkg / "manifest.json").write_text(json.dumps(man))
    (tmp_path / "registry.yaml").write_text(f"- {pkg}\n")
    (tmp_path / "nearline.yaml").write_text(f"models:\n  registry: {tmp_path / 'registry.yaml'}\n")
    res, _ = nearline("--config", str(tmp_path / "nearline.yaml"), "models", "check", cwd=tmp_path)
    assert res.returncode == 1 and "member_bad@v1" in res.stdout + res.stderr
    assert "\x1b[" not in res.stderr and "onnxruntime::" not in res.stderr and "[E:onnxruntime" not in res.stderr
    (tmp_path / "registry.yaml").write_text("")
    res, _ = nearline("--config", str(tmp_path / "nearline.yaml"), "models", "register", str(pkg), cwd=tmp_path,
                      env=dead_endpoints())
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "member_bad@v1" in lines[0] and "not servable" in lines[0], res.stderr
    assert "\x1b[" not in res.stderr and "Traceback" not in res.stderr
