"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

The stack is not started here (no engine on CI machines); these tests keep the
files consistent with each other and with the worker's settings: service names
in the worker's environment, ports, volumes, healthchecks, startup order and
pinned images. The healthcheck one-liners are run against a local HTTP server.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from processors.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

REQUIRED_SERVICES = {"kafka", "redis", "topics", "worker", "prometheus", "grafana"}
#: Services that run once and exit; every other service runs for good.
ONE_SHOT = {"topics"}
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "docker-compose.yml has no services mapping"
    )
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either compose syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes (short syntax [ip:][host:]container)."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    mapping = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) >= 2, f"port {entry!r} is not published on a fixed host port"
        mapping[int(parts[-1])] = int(parts[-2])
    return mapping


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, address = item.strip().split("://", 1)
        host, port = address.rsplit(":", 1)
        result[name] = (host, int(port))
    return result


# --- services and startup order ----------------------------------------------------


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert not check.get("disable"), f"service {name} disables its healthcheck"
        test = check.get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, (
            f"service {name}: healthcheck test must be ['CMD', ...] or ['CMD-SHELL', '...']"
        )
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"service {name}: healthcheck has no {key}"
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, (
            f"service {name} runs for good but is not restarted when it dies"
        )


def test_one_shot_services_run_once(services: dict[str, dict[str, Any]]) -> None:
    for name in ONE_SHOT:
        service = services[name]
        # A restart policy would make `service_completed_successfully` never hold.
        assert service.get("restart") in {None, "no"}, f"one-shot {name} must not restart"
        assert service.get("healthcheck", {}).get("disable") is True, (
            f"one-shot {name} inherits the worker image's /livez healthcheck; disable it"
        )


def test_every_depends_on_waits_for_a_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), (
            f"service {name}: depends_on is a list, which only waits for the containers "
            "to be created; use the long form with a condition"
        )
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = (spec or {}).get("condition")
            if dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", (
                    f"{name} must wait for one-shot {dependency} to complete successfully"
                )
            else:
                assert condition == "service_healthy", (
                    f"{name} must wait for {dependency} to be healthy, not {condition!r}"
                )
                assert services[dependency].get("healthcheck"), (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
    }
    # Prometheus must run while the worker is down or not ready: that is what
    # OmniWorkerDown and OmniWorkerNotReady are for.
    assert "worker" not in services["prometheus"].get("depends_on", {})


# --- the worker and the topics job -------------------------------------------------


def test_worker_and_topics_run_the_built_image(services: dict[str, dict[str, Any]]) -> None:
    worker, topics = services["worker"], services["topics"]
    assert worker.get("build") in (".", {"context": "."}), "worker must be built from the repo"
    assert topics.get("image") == worker.get("image"), "topics runs the worker's image"
    assert topics.get("command") == ["topics"], "topics runs `python -m processors topics`"
    assert worker.get("command", ["worker"]) == ["worker"]


def test_worker_environment_points_at_the_services(services: dict[str, dict[str, Any]]) -> None:
    kafka_internal = listeners(env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    internal_name = env_of(services["kafka"])["KAFKA_INTER_BROKER_LISTENER_NAME"]
    kafka_host, kafka_port = kafka_internal[internal_name]
    assert kafka_host == "kafka"
    for name in ("worker", "topics"):
        env = env_of(services[name])
        assert env.get("OMNI_KAFKA_BOOTSTRAP") == f"kafka:{kafka_port}", (
            f"{name}: OMNI_KAFKA_BOOTSTRAP must be the broker's in-network listener"
        )
    env = env_of(services["worker"])
    redis_url = urlsplit(env["OMNI_REDIS_URL"])
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
    assert env["OMNI_DATA_DIR"] == "/data"
    # The default 127.0.0.1 would be unreachable through the published ports.
    assert env["OMNI_WEB_BIND"] == "0.0.0.0"
    # Unknown OMNI_ variables are silently ignored by the settings: catch typos.
    for key in env:
        assert key.startswith("OMNI_") and key[5:].lower() in Settings.model_fields, (
            f"worker: {key} is not a setting (processors/settings.py)"
        )


def test_worker_ports_match_the_settings(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["worker"])
    web_port = int(env.get("OMNI_WEB_PORT", DEFAULTS["web_port"]))
    metrics_port = int(env.get("OMNI_METRICS_PORT", DEFAULTS["metrics_port"]))
    assert (
        (web_port, metrics_port) == (6066, 9108) == (DEFAULTS["web_port"], DEFAULTS["metrics_port"])
    )
    assert published(services["worker"]) == {6066: 6066, 9108: 9108}


def test_worker_healthcheck_is_readiness_on_the_web_port(
    services: dict[str, dict[str, Any]],
) -> None:
    test = " ".join(services["worker"]["healthcheck"]["test"])
    assert "http://127.0.0.1:6066/readyz" in test
    # Restoring tables takes a while: the worker must not count as failed meanwhile.
    assert _seconds(services["worker"]["healthcheck"]["start_period"]) >= 60


def test_worker_keeps_its_state_in_a_named_volume(compose: dict[str, Any]) -> None:
    mounts = {}
    for volume in compose["services"]["worker"]["volumes"]:
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    source = mounts.get("/data")
    assert source, "worker mounts nothing on /data (OMNI_DATA_DIR)"
    assert not source.startswith((".", "/")), "the worker's /data must be a named volume"
    assert source in (compose.get("volumes") or {}), f"volume {source} is not declared"


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/", "~")):
                path = (ROOT / source).resolve()
                assert path.exists(), f"{name} bind-mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


# --- Kafka, Redis, Prometheus ------------------------------------------------------


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = env["KAFKA_NODE_ID"]
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(bound) == set(protocols), "every listener needs a security protocol and back"
    assert controller in bound and controller not in advertised, (
        "the controller listener is bound but never advertised to clients"
    )
    assert set(advertised) == set(bound) - {controller}
    for name, (_, port) in advertised.items():
        assert bound[name][1] == port, f"listener {name} is advertised on another port"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:{bound[controller][1]}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # The host reaches the broker through the published port of a listener that
    # advertises a host-side address; the others advertise the service name.
    host_side = {n: a for n, a in advertised.items() if a[0] in {"127.0.0.1", "localhost"}}
    assert host_side, "no listener is advertised for clients on the host"
    ports = published(kafka)
    for host, port in host_side.values():
        assert ports.get(port) == port, f"{host}:{port} is advertised but not published"
    assert len(env.get("CLUSTER_ID", "")) == 22, "CLUSTER_ID must be a base64 UUID (22 chars)"


def test_kafka_broker_settings(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["kafka"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_NUM_PARTITIONS"]) == DEFAULTS["partitions"]
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", f"{key} must be 1 on a single node"
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["kafka"]["volumes"]}
    assert env["KAFKA_LOG_DIRS"] in mounts, "Kafka's log dir must be on the volume"
    healthcheck = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:9092" in (
        healthcheck
    )


def test_kafka_matches_the_local_broker(services: dict[str, dict[str, Any]]) -> None:
    """The compose broker behaves like deploy/kafka/server.properties (`make up`)."""
    env = env_of(services["kafka"])
    # Addresses and paths differ by design (test_kafka_is_a_single_kraft_node).
    node_specific = {
        "listeners",
        "advertised.listeners",
        "listener.security.protocol.map",
        "controller.quorum.voters",
        "log.dirs",
    }
    properties = {}
    for line in (ROOT / "deploy/kafka/server.properties").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    assert properties, "deploy/kafka/server.properties is empty"
    for key, value in properties.items():
        if key in node_specific:
            continue
        # The image maps KAFKA_A_B to a.b.
        variable = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(variable) == value, f"{variable}={env.get(variable)!r}, {key}={value}"


def test_redis_never_evicts_and_persists(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = redis["command"]
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    assert args[0] == "redis-server"
    assert "--maxmemory-policy" in args and args[args.index("--maxmemory-policy") + 1] == (
        "noeviction"
    )
    assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["image"].startswith("redis:7"), "the read model is written for Redis 7"


def test_prometheus_uses_the_compose_config(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus["volumes"]}
    assert mounts.get("/etc/prometheus") == "./deploy/prometheus"
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config = flags["--config.file"]
    assert config.startswith("/etc/prometheus/")
    local = ROOT / "deploy/prometheus" / config.removeprefix("/etc/prometheus/")
    scrape = yaml.safe_load(local.read_text())["scrape_configs"]
    targets = [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
    assert f"worker:{DEFAULTS['metrics_port']}" in targets


def test_grafana_is_provisioned_from_the_repo(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    grafana = services["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    assert mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning"
    assert mounts.get("/var/lib/grafana/dashboards") == "./deploy/grafana/dashboards"
    # Grafana's own state (users, preferences) survives `down`/`up` like the others.
    assert mounts.get("/var/lib/grafana") in compose["volumes"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert published(grafana) == {3000: 3000}
    assert "/api/health" in " ".join(grafana["healthcheck"]["test"])
    assert grafana["image"].startswith("grafana/grafana:")

    provisioning = ROOT / "deploy/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_port = next(iter(published(services["prometheus"])))
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}", "the compose service"
    (provider,) = yaml.safe_load((provisioning / "dashboards/omni.yml").read_text())["providers"]
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards", "the provider reads the mounted dashboards"
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/")
    dashboard = json.loads(
        (ROOT / "deploy/grafana/dashboards" / home.removeprefix(path + "/")).read_text()
    )
    # Every panel and target names the provisioned data source by its fixed uid.
    uids = {
        d["datasource"]["uid"] for panel in dashboard["panels"] for d in (panel, *panel["targets"])
    }
    assert uids == {source["uid"]}
    # $__rate_interval is at least 4 scrapes only if Grafana knows the scrape interval.
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.compose.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"service {name} has no image (built services need a tag too)"
        repository, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
        assert tag and "/" not in tag, f"service {name}: image {image} has no tag"
        assert tag != "latest", f"service {name}: image {image} is not pinned"
        assert repository


# --- Dockerfile and .dockerignore --------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_builds_the_worker_as_non_root() -> None:
    instructions = dockerfile_instructions()
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) == 1 and froms[0].startswith("python:3.11-slim"), froms
    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    assert re.search(r"pip install (\.|/src)\b", runs), "the image must `pip install` the package"
    users = [args for ins, args in instructions if ins == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the worker must not run as root"
    entrypoint = [json.loads(args) for ins, args in instructions if ins == "ENTRYPOINT"]
    cmd = [json.loads(args) for ins, args in instructions if ins == "CMD"]
    assert entrypoint[-1] + cmd[-1] == ["python", "-m", "processors", "worker"]
    env = " ".join(args for ins, args in instructions if ins == "ENV")
    assert "OMNI_WEB_BIND=0.0.0.0" in env and "OMNI_DATA_DIR=/data" in env
    assert "curl" not in runs


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns if (ROOT / p.rstrip("*")).is_dir()}
    copied = set()
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            copied.update(Path(src).name for src in args.split()[:-1] if not src.startswith("--"))
    assert packages <= copied, f"the Dockerfile does not copy {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied, "setuptools needs pyproject and the readme"


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = {".venv", ".omni", ".cache", ".git"} - entries
    assert not missing, f".dockerignore lacks {sorted(missing)}"
    for needed in ("pyproject.toml", "README.md", "processors"):
        assert needed not in entries


# --- the healthcheck commands, run for real ----------------------------------------


#: The test server plays a worker that is alive but not ready.
_HEALTH_STATUS = {"/livez": 200, "/readyz": 503}


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(_HEALTH_STATUS.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_python_check(argv: list[str], port: int, path: str) -> int:
    """Run a `python -c` healthcheck against the test server on `port`."""
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2].replace(":6066/", f":{port}/").replace("/livez", path).replace("/readyz", path)
    # A proxy in the environment must not catch the probe of 127.0.0.1.
    env = {"OMNI_WEB_PORT": str(port), "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=False
    )
    return result.returncode


def test_dockerfile_healthcheck_probes_livez(health_server: int) -> None:
    checks = [args for ins, args in dockerfile_instructions() if ins == "HEALTHCHECK"]
    assert len(checks) == 1
    argv = json.loads(checks[0].split(" CMD ", 1)[1])
    assert "/livez" in argv[2] and "6066" in argv[2]
    assert _run_python_check(argv, health_server, "/livez") == 0
    assert _run_python_check(argv, health_server, "/readyz") != 0  # 503 must fail
    assert _run_python_check(argv, health_server, "/missing") != 0


def test_compose_worker_healthcheck_fails_until_ready(
    services: dict[str, dict[str, Any]], health_server: int
) -> None:
    test = services["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert _run_python_check(test[1:], health_server, "/readyz") != 0  # 503: not ready
    assert _run_python_check(test[1:], health_server, "/livez") == 0


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a compose duration: {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


# --- no secrets in the files: they come from the environment or an .env --------------

#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?message}``,
#: ``${NAME?message}``.
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
#: Names of variables that hold secrets, whatever the service.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|CREDENTIAL|TOKEN|(^|_)KEYS?$|_KEY_|JAAS")


class MissingVariable(Exception):
    """What compose prints for ``${NAME:?message}`` when NAME is unset or empty."""


def interpolate(value: str, environ: dict[str, str]) -> str:
    """The value compose passes to the container, with compose's rules for ``${...}``."""

    def one(found: re.Match[str]) -> str:
        name, op, arg = found["name"], found["op"], found["arg"] or ""
        present = environ.get(name)
        if op in (":?", "?") and (present is None or (op == ":?" and not present)):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and (present is None or (op == ":-" and not present)):
            return arg
        return present or ""

    return _INTERPOLATION.sub(one, value)


def secret_settings() -> set[str]:
    """OMNI_* names of the settings typed as secrets (``SecretStr``)."""
    return {
        f"OMNI_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }


def is_secret(name: str) -> bool:
    return name in secret_settings() or bool(_SECRET_NAME.search(name))


def test_compose_holds_no_secret_only_references_to_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    for service_name, service in services.items():
        for name, value in env_of(service).items():
            if "://" in value:
                # A URL is an address; its password, if any, must come from the environment.
                password = urlsplit(value).password
                secret = None if password is None else password
                assert secret is None or _INTERPOLATION.fullmatch(secret), (
                    f"{service_name}: {name} carries a password in the file; write it as "
                    "${NAME:?<what to set>} and let the operator set it (environment or .env)"
                )
            elif is_secret(name):
                assert _INTERPOLATION.fullmatch(value), (
                    f"{service_name}: {name} is a secret with a value in docker-compose.yml; "
                    f"write ${{{name}:?<what to set and how>}} so it comes from the environment"
                )
            else:
                continue
            for found in _INTERPOLATION.finditer(value):
                required = found["op"] in (":?", "?")
                assert required or (found["op"] in (":-", "-") and not found["arg"]), (
                    f"{service_name}: {name} has a default secret {found['arg']!r}; a default "
                    "in a public file is no secret: require it with :? (or default to empty)"
                )
                if required:
                    assert len(found["arg"].split()) >= 5, (
                        f"{service_name}: {name}'s :? message must say what to set and how"
                    )


def test_compose_refuses_to_start_the_worker_without_an_action_token_key(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["worker"])
    with pytest.raises(MissingVariable, match="OMNI_ACTION_TOKEN_KEY") as missing:
        {name: interpolate(value, {}) for name, value in env.items()}
    assert "32 bytes" in str(missing.value) and "secrets.token_urlsafe(32)" in str(missing.value)
    with pytest.raises(MissingVariable):  # set but empty is missing too
        interpolate(env["OMNI_ACTION_TOKEN_KEY"], {"OMNI_ACTION_TOKEN_KEY": ""})
    key = "k" * 43
    rendered = {
        name: interpolate(value, {"OMNI_ACTION_TOKEN_KEY": key}) for name, value in env.items()
    }
    assert rendered["OMNI_ACTION_TOKEN_KEY"] == key
    assert rendered["OMNI_ACTION_TOKEN_PREVIOUS_KEYS"] == ""
    # What the worker then reads: the key it signs with, and no previous keys.
    worker_env = {k: v for k, v in rendered.items() if k.startswith("OMNI_")}
    settings = Settings.model_validate({k[5:].lower(): v for k, v in worker_env.items() if v != ""})
    assert settings.action_token_keys().current == key.encode()


def test_the_image_sets_no_secret() -> None:
    for instruction, args in dockerfile_instructions():
        if instruction not in ("ENV", "ARG"):
            continue
        for assignment in shlex.split(args):
            name = assignment.split("=", 1)[0]
            assert not is_secret(name), (
                f"the Dockerfile's {instruction} sets {name}: an image is shared, a secret in "
                "it is public; pass it at run time (-e, compose's environment)"
            )


def test_env_files_with_secrets_stay_out_of_git_and_the_image() -> None:
    for ignore in (ROOT / ".gitignore", DOCKERIGNORE):
        entries = {line.strip() for line in ignore.read_text().splitlines()}
        assert ".env" in entries, f"{ignore.name} must list .env (the operator's secrets)"


# --- the Customer 360 API ------------------------------------------------------------


def test_the_api_runs_omni_api_from_the_worker_image_on_its_port(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    assert api["image"] == services["worker"]["image"] and api.get("build") in (
        ".",
        {"context": "."},
    )
    assert (api["entrypoint"], api["command"]) == (["omni"], ["api"])
    env = env_of(api)
    for key in env:
        assert key.startswith("OMNI_") and key[5:].lower() in Settings.model_fields, key
    port = int(env["OMNI_API_PORT"])
    assert port == DEFAULTS["api_port"] and published(api) == {port: port}
    assert port not in {DEFAULTS["web_port"], DEFAULTS["metrics_port"]}
    assert env["OMNI_API_HOST"] == "0.0.0.0"
    assert env["OMNI_REDIS_URL"] == env_of(services["worker"])["OMNI_REDIS_URL"]
    assert f"http://127.0.0.1:{port}/livez" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_compose_refuses_to_start_the_api_without_callers(
    services: dict[str, dict[str, Any]],
) -> None:
    value = env_of(services["api"])["OMNI_API_TOKENS"]
    with pytest.raises(MissingVariable, match="OMNI_API_TOKENS") as missing:
        interpolate(value, {})
    assert "SHA-256" in str(missing.value)
    assert interpolate(value, {"OMNI_API_TOKENS": "{}"}) == "{}"
