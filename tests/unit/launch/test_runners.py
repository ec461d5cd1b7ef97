"""Runner choice and the Beam options each runner gets."""

import os

import apache_beam
import pytest

from nearline.launch.runners import RunnerError, beam_args, prism_binary, prism_cache_dir


def test_fnapi_is_the_default_and_streaming_is_always_on():
    assert beam_args("FnApiRunner") == ("FnApiRunner", ["--runner=FnApiRunner", "--streaming"])
    assert beam_args("fnapi")[0] == "FnApiRunner"


def test_prism_gets_its_binary_and_the_loopback_environment(tmp_path):
    binary = tmp_path / "prism"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    name, args = beam_args("prism", [], str(binary))
    assert name == "PrismRunner"
    assert args == ["--runner=PrismRunner", f"--prism_location={binary}", "--environment_type=LOOPBACK", "--streaming"]


def test_raw_beam_options_win(tmp_path):
    name, args = beam_args("prism", ["--runner=FlinkRunner", "--flink_master=host:8081"])
    assert name == "FlinkRunner" and args == ["--runner=FlinkRunner", "--flink_master=host:8081", "--streaming"]


def test_a_missing_prism_binary_is_one_line_that_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv("NEARLINE_PRISM_BINARY", raising=False)
    monkeypatch.setenv("NEARLINE_PRISM_DIR", str(tmp_path / "none"))
    with pytest.raises(RunnerError) as err:
        prism_binary()
    msg = str(err.value)
    assert "\n" not in msg and "bash scripts/setup.sh" in msg and f"prism@v{apache_beam.__version__}" in msg
    assert prism_cache_dir() == tmp_path / "none" / f"v{apache_beam.__version__}"


def test_setup_builds_prism_where_the_runner_looks():
    # the cache directory scripts/setup.sh fills is the one the runner reads by default
    setup = open(os.path.join(os.path.dirname(__file__), "../../../scripts/setup.sh")).read()
    assert 'nearline/prism}/v$BEAM_VERSION' in setup and "go install" in setup
