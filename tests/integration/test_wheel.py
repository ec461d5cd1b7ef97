"""The built wheel, installed in a fresh venv, works from any directory: package data (schemas, the
shipped registry and towers) travels with it, and it installs no generic top-level import names."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from nearline import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(root / "dist"), str(REPO_ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (whl,) = (root / "dist").glob("nearline_embeddings-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # The dependencies (Beam, onnxruntime, ...: ~1 GB) come from this test venv through a .pth line
    # instead of a second download; the project itself comes only from the wheel.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    Path(site, "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(whl)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return env_dir


def _run(env_dir, cwd, *args):
    return subprocess.run([str(env_dir / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}, timeout=120)


def test_cli_and_client_work_from_another_directory(wheel_venv, tmp_path):
    out = _run(wheel_venv, tmp_path, "nearline", "models", "list")
    assert out.returncode == 0, out.stderr
    assert "member_pyramid" in out.stdout and "job_pyramid" in out.stdout
    out = _run(wheel_venv, tmp_path, "nearline", "models", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    code = ("import nearline, nearline.io.codec as c, nearline.consumers.client, nearline.models.tower, nearline.beam_jobs.nearline_job;"
            "codec = c.Codec(); rec = {'entity_type': 'job', 'entity_id': 'j1', 'version': 3, 'op': 'DELETE', 'fields': {},"
            " 'event_time': 1}; print(codec.decode(codec.encode('EntityUpdate', rec))['version'], nearline.__file__)")
    out = _run(wheel_venv, tmp_path, "python", "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    version, path = out.stdout.split()
    assert version == "3" and "site-packages" in path and str(REPO_ROOT) not in path


def test_no_generic_top_level_names(wheel_venv, tmp_path):
    for name in ("models", "beam_jobs", "schemas"):
        out = _run(wheel_venv, tmp_path, "python", "-c", f"import {name}")
        assert out.returncode != 0 and "No module named" in out.stderr, name


def test_a_cli_error_is_one_line(wheel_venv, tmp_path):
    out = _run(wheel_venv, tmp_path, "nearline", "--config", "missing.yaml", "models", "list")
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
