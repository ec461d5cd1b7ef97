"""Java artifacts from Maven Central: the Apache Kafka broker (and MirrorMaker 2), fetched once by the setup.

Nothing is downloaded at run time: `scripts/setup.sh` runs ``python -m nearline.jars fetch``, which
writes a tiny POM naming the pinned artifacts and lets Maven copy them with their runtime dependencies
into a cache folder (``$NEARLINE_JARS_DIR``, default ``~/.cache/nearline/jars``). The services then
start ``java -cp '<folder>/*' kafka.Kafka ...``. Why Maven and not the release tarball: the project's
machines reach Maven Central but not the Apache download mirrors, and the Maven artifacts are the
same release (`kafka_2.13` plus its runtime-scoped modules such as kafka-server and kafka-raft).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Pinned: the broker every test, the demo and CI run against; connect-mirror is MirrorMaker 2.
KAFKA_VERSION = "4.1.1"
SLF4J_SIMPLE_VERSION = "1.7.36"  # the binding must match the slf4j-api that kafka 4.1.1 resolves (1.7.36)

BUNDLES: dict[str, list[tuple[str, str, str]]] = {
    f"kafka-{KAFKA_VERSION}": [
        ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        ("org.apache.kafka", "connect-mirror", KAFKA_VERSION),
        ("org.apache.kafka", "connect-runtime", KAFKA_VERSION),
        ("org.slf4j", "slf4j-simple", SLF4J_SIMPLE_VERSION),
    ],
}


class JarsError(RuntimeError):
    """A Java prerequisite is missing; the message says what to do."""


def jars_root() -> Path:
    return Path(os.environ.get("NEARLINE_JARS_DIR") or Path.home() / ".cache" / "nearline" / "jars")


def kafka_dir() -> Path:
    return jars_root() / f"kafka-{KAFKA_VERSION}"


def java_executable() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    exe = shutil.which("java")
    if not exe:
        raise JarsError("java not found: install OpenJDK 17+ (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    return exe


def kafka_classpath() -> str:
    """The broker's classpath, or a one-line error naming the command that fetches it."""
    d = kafka_dir()
    marker = d / ".complete"
    if not marker.exists():
        raise JarsError(f"Apache Kafka {KAFKA_VERSION} jars not found in {d}: run `python -m nearline.jars fetch` "
                        "(scripts/setup.sh does it; needs Maven and Maven Central)")
    return f"{d}/*"


def _pom(artifacts: list[tuple[str, str, str]]) -> str:
    deps = "\n".join(f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
                     for g, a, v in artifacts)
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>nearline.local</groupId><artifactId>jars</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def fetch(bundle: str | None = None, quiet: bool = True) -> Path:
    """Copy the bundle's artifacts and their runtime dependencies into the cache (idempotent)."""
    bundle = bundle or f"kafka-{KAFKA_VERSION}"
    out = jars_root() / bundle
    if (out / ".complete").exists():
        return out
    mvn = shutil.which("mvn")
    if not mvn:
        raise JarsError("mvn not found: install Maven 3.8+ (Debian: apt-get install maven)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(_pom(BUNDLES[bundle]))
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [mvn, "-B", *(["-q"] if quiet else []), "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={staging}"]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0:
            lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "ERROR" in ln]
            raise JarsError(f"Maven could not fetch {bundle}: {(lines or ['exit ' + str(res.returncode)])[0].strip()}")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    (out / ".complete").write_text("\n".join(":".join(a) for a in BUNDLES[bundle]) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m nearline.jars fetch", file=sys.stderr)
        return 2
    try:
        java_executable()
        for name in BUNDLES:
            path = fetch(name)
            print(f"{name}: {len(list(path.glob('*.jar')))} jars in {path}")
    except JarsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
