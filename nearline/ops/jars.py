"""Java artifacts from Maven Central: the Apache Kafka broker (and MirrorMaker 2) and a schema registry,
fetched (the registry: built) once by the setup.

Nothing is downloaded at run time: `scripts/setup.sh` runs ``python -m nearline.ops.jars fetch``, which
writes a tiny POM naming the pinned artifacts and lets Maven copy them with their runtime dependencies
into a cache folder (``$NEARLINE_JARS_DIR``, default ``~/.cache/nearline/jars``). The services then
start ``java -cp '<folder>/*' kafka.Kafka ...``. Why Maven and not the release tarball: the project's
machines reach Maven Central but not the Apache download mirrors, and the Maven artifacts are the
same release (`kafka_2.13` plus its runtime-scoped modules such as kafka-server and kafka-raft).

The schema registry (for ``kafka.wire_format: confluent``; tests and local runs) is Apicurio Registry
(Apache-2.0), which serves the Confluent Schema Registry REST API under ``/apis/ccompat/v7``. Maven
Central has its application only as a Quarkus *thin* jar, so :func:`build_schema_registry` writes a
wrapper Maven project that depends on it and runs Quarkus' augmentation (``quarkus-maven-plugin:build``)
to produce a runnable ``*-runner.jar`` + ``lib/`` (in-memory H2 storage, Apicurio's default). Pinned:
Apicurio 2.4.2.Final on Quarkus 2.16.4.Final, the newest release whose modules all resolve from Maven
Central (3.x and 2.5+/2.6 lack e.g. ``apicurio-registry-schema-util-provider``). Two gaps are filled
here: the JSON-Schema validator Apicurio takes from JitPack is left out (only Avro is registered), and
the one build step of ``apicurio-common-app-components-config-index-deployment`` (not on Central) is
compiled from its Apache-2.0 source below.
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


APICURIO_VERSION = "2.4.2.Final"
QUARKUS_VERSION = "2.16.4.Final"  # the one Apicurio 2.4.2.Final's parent POM declares
APICURIO_COMMON_VERSION = "0.1.18.Final"  # apicurio-common-app-components that Apicurio 2.4.2 uses
SCHEMA_REGISTRY_BUNDLE = f"apicurio-registry-{APICURIO_VERSION}"


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
        raise JarsError(f"Apache Kafka {KAFKA_VERSION} jars not found in {d}: run `python -m nearline.ops.jars fetch` "
                        "(scripts/setup.sh does it; needs Maven and Maven Central)")
    return f"{d}/*"


def schema_registry_jar() -> Path:
    """The runnable registry jar, or a one-line error naming the command that builds it."""
    jar = jars_root() / SCHEMA_REGISTRY_BUNDLE / "schema-registry-runner.jar"
    if not (jar.parent / ".complete").exists():
        raise JarsError(f"Apicurio Registry {APICURIO_VERSION} not built in {jar.parent}: run `python -m nearline.ops.jars fetch` "
                        "(scripts/setup.sh does it; needs Maven and Maven Central)")
    return jar


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


# apicurio-common-app-components 0.1.18.Final, config-index/deployment/.../ConfigIndexProcessor.java
# (Copyright 2022 Red Hat, Apache License 2.0), unchanged but for this comment: it publishes the
# @Dynamic config properties as a CDI bean that Apicurio's admin API injects.
_CONFIG_INDEX_PROCESSOR = """package apicurio.common.app.components.config.index.deployment;

import java.util.List;
import java.util.stream.Collectors;

import org.eclipse.microprofile.config.inject.ConfigProperty;
import org.jboss.jandex.AnnotationInstance;
import org.jboss.jandex.AnnotationValue;
import org.jboss.jandex.DotName;
import org.jboss.jandex.Type;

import apicurio.common.app.components.config.index.DynamicPropertiesInfoRecorder;
import io.apicurio.common.apps.config.Dynamic;
import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.arc.deployment.BeanDiscoveryFinishedBuildItem;
import io.quarkus.arc.deployment.SyntheticBeanBuildItem;
import io.quarkus.arc.processor.InjectionPointInfo;
import io.quarkus.deployment.annotations.BuildProducer;
import io.quarkus.deployment.annotations.BuildStep;
import io.quarkus.deployment.annotations.ExecutionTime;
import io.quarkus.deployment.annotations.Record;
import io.quarkus.runtime.RuntimeValue;

class ConfigIndexProcessor {

    @BuildStep
    @Record(ExecutionTime.RUNTIME_INIT)
    void syntheticBean(DynamicPropertiesInfoRecorder recorder, BeanDiscoveryFinishedBuildItem beanDiscovery, BuildProducer<SyntheticBeanBuildItem> syntheticBeans) {
        List<DynamicConfigPropertyDef> dynamicProperties = beanDiscovery.getInjectionPoints()
                .stream()
                .filter(ConfigIndexProcessor::isDynamicConfigProperty)
                .map(injectionPointInfo -> {
                    try {
                        AnnotationInstance configPropertyAI = injectionPointInfo.getRequiredQualifier(DotName.createSimple(ConfigProperty.class.getName()));
                        AnnotationInstance dynamicAI = injectionPointInfo.getRequiredQualifier(DotName.createSimple(Dynamic.class.getName()));

                        Type supplierType = injectionPointInfo.getRequiredType();
                        Type actualType = supplierType.asParameterizedType().arguments().get(0);

                        final String propertyName = configPropertyAI.value("name").asString();
                        final Class<?> propertyType = Class.forName(actualType.name().toString());
                        final AnnotationValue defaultValueAV = configPropertyAI.value("defaultValue");
                        if (defaultValueAV == null) {
                            throw new RuntimeException("Dynamic configuration property '" + propertyName + "' must have a default value.");
                        }
                        final String defaultValue = defaultValueAV.asString();
                        DynamicConfigPropertyDef def = new DynamicConfigPropertyDef(propertyName, propertyType, defaultValue);

                        final AnnotationValue labelAV = dynamicAI.value("label");
                        final AnnotationValue descriptionAV = dynamicAI.value("description");
                        final AnnotationValue requiresAV = dynamicAI.value("requires");
                        if (labelAV != null) {
                            def.setLabel(labelAV.asString());
                        }
                        if (descriptionAV != null) {
                            def.setDescription(descriptionAV.asString());
                        }
                        if (requiresAV != null) {
                            def.setRequires(requiresAV.asStringArray());
                        }

                        return def;
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                })
                .collect(Collectors.toList());

        final RuntimeValue<DynamicConfigPropertyList> dynamicPropertiesHolderRuntimeValue = recorder.initializePropertiesInfo(
                dynamicProperties);

        syntheticBeans.produce(SyntheticBeanBuildItem.configure(DynamicConfigPropertyList.class)
                .runtimeValue(dynamicPropertiesHolderRuntimeValue)
                .unremovable()
                .setRuntimeInit()
                .done());
    }

    private static boolean isDynamicConfigProperty(InjectionPointInfo injectionPointInfo) {
        return injectionPointInfo.getRequiredQualifier(DotName.createSimple(ConfigProperty.class.getName())) != null && injectionPointInfo.isField() &&
                injectionPointInfo.getTarget().asField().annotation(DotName.createSimple(Dynamic.class.getName())) != null;
    }
}
"""

_HEAD = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <properties>
    <maven.compiler.source>17</maven.compiler.source><maven.compiler.target>17</maven.compiler.target>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
"""


def _config_index_deployment_pom() -> str:
    common = f"<groupId>io.apicurio</groupId><version>{APICURIO_COMMON_VERSION}</version>"
    return _HEAD + f"""  <groupId>io.apicurio</groupId><artifactId>apicurio-common-app-components-config-index-deployment</artifactId>
  <version>{APICURIO_COMMON_VERSION}</version>
  <dependencyManagement><dependencies>
    <dependency><groupId>io.quarkus</groupId><artifactId>quarkus-bom</artifactId><version>{QUARKUS_VERSION}</version><type>pom</type><scope>import</scope></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency>{common}<artifactId>apicurio-common-app-components-config-definitions</artifactId></dependency>
    <dependency>{common}<artifactId>apicurio-common-app-components-config-index</artifactId></dependency>
    <dependency><groupId>io.quarkus</groupId><artifactId>quarkus-arc-deployment</artifactId></dependency>
  </dependencies>
</project>
"""


def _schema_registry_pom() -> str:
    return _HEAD + f"""  <groupId>nearline.local</groupId><artifactId>schema-registry</artifactId><version>1</version>
  <dependencyManagement><dependencies>
    <dependency><groupId>io.apicurio</groupId><artifactId>apicurio-registry</artifactId><version>{APICURIO_VERSION}</version><type>pom</type><scope>import</scope></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>io.apicurio</groupId><artifactId>apicurio-registry-app</artifactId><version>{APICURIO_VERSION}</version>
      <exclusions><exclusion><groupId>com.github.everit-org.json-schema</groupId><artifactId>org.everit.json.schema</artifactId></exclusion></exclusions>
    </dependency>
  </dependencies>
  <build><finalName>schema-registry</finalName><plugins>
    <plugin><groupId>io.quarkus</groupId><artifactId>quarkus-maven-plugin</artifactId><version>{QUARKUS_VERSION}</version>
      <executions><execution><goals><goal>build</goal></goals></execution></executions></plugin>
  </plugins></build>
</project>
"""


def _mvn(args: list[str], cwd: Path, what: str, quiet: bool) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise JarsError("mvn not found: install Maven 3.8+ (Debian: apt-get install maven)")
    res = subprocess.run([mvn, "-B", *(["-q"] if quiet else []), *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "ERROR" in ln]
        raise JarsError(f"Maven could not {what}: {(lines or ['exit ' + str(res.returncode)])[0].strip()[:400]}")


def build_schema_registry(quiet: bool = True) -> Path:
    """Build the runnable Apicurio Registry into the cache (idempotent: skipped once built)."""
    out = jars_root() / SCHEMA_REGISTRY_BUNDLE
    if (out / ".complete").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        ext = Path(tmp) / "config-index-deployment"
        src = ext / "src/main/java/apicurio/common/app/components/config/index/deployment"
        src.mkdir(parents=True)
        (src / "ConfigIndexProcessor.java").write_text(_CONFIG_INDEX_PROCESSOR)
        (ext / "src/main/resources/META-INF").mkdir(parents=True)
        # what quarkus-extension-processor would generate: the class that holds @BuildStep methods
        (ext / "src/main/resources/META-INF/quarkus-build-steps.list").write_text(
            "apicurio.common.app.components.config.index.deployment.ConfigIndexProcessor\n")
        (ext / "pom.xml").write_text(_config_index_deployment_pom())
        _mvn(["install"], ext, "build the config-index Quarkus build step", quiet)  # into ~/.m2, where Quarkus looks
        app = Path(tmp) / "app"
        (app / "src/main/resources").mkdir(parents=True)
        # Apicurio 2.4's app jar has no Jandex index: index it, or its CDI beans are not found
        (app / "src/main/resources/application.properties").write_text(
            "quarkus.index-dependency.registry.group-id=io.apicurio\n"
            "quarkus.index-dependency.registry.artifact-id=apicurio-registry-app\n")
        (app / "pom.xml").write_text(_schema_registry_pom())
        _mvn(["package", "-DskipTests"], app, f"build Apicurio Registry {APICURIO_VERSION}", quiet)
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.move(str(app / "target/schema-registry-runner.jar"), staging / "schema-registry-runner.jar")
        shutil.move(str(app / "target/lib"), staging / "lib")  # the runner jar's manifest names lib/...
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    (out / ".complete").write_text(f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION} quarkus {QUARKUS_VERSION}\n")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["fetch"]:
        print("usage: python -m nearline.ops.jars fetch [--no-registry]", file=sys.stderr)
        return 2
    try:
        java_executable()
        for name in BUNDLES:
            path = fetch(name)
            print(f"{name}: {len(list(path.glob('*.jar')))} jars in {path}")
        if "--no-registry" not in argv:
            path = build_schema_registry()
            print(f"{SCHEMA_REGISTRY_BUNDLE}: {len(list((path / 'lib').rglob('*.jar')))} jars in {path}")
    except JarsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
