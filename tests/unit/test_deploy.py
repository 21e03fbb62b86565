"""deploy/: the files people copy into production, checked offline with the tools they would
use (cfn-lint, kubernetes-validate against the Kubernetes schema, systemd-analyze) and
against rotaproxy itself: every embedded config parses, every probe and health check asks
the admin port that config sets, every stop timeout outlasts shutdown_timeout, and the
README's docker commands are the Dockerfile's."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "rotaproxy.service"
TEMPLATE = DEPLOY / "cloudformation" / "rotaproxy-ec2.yaml"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
TASK_DEFINITION = DEPLOY / "ecs" / "task-definition.json"
EXAMPLE_CONFIG = DEPLOY / "rotaproxy.toml"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
# Kubernetes versions the manifests must validate against: the first with native sidecars
# on by default, and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
ADMIN_URL = re.compile(r"http://(127\.0\.0\.1:\d+)/(healthz|readyz)")
TOOL_TIMEOUT = 120


def tool(name: str) -> str:
    """A console script installed next to this interpreter (the test extra); fail, never skip."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed: pip install -e '.[test]'"
    return str(path)


def parse_deploy_config(text: str, source: str, tmp_path: Path) -> Config:
    """rotaproxy's own parser; a tls_ca_file that exists only on the target host is stood in for."""
    stand_in = tmp_path / "rds-global-bundle.pem"
    stand_in.write_text("stand-in for the RDS CA bundle\n")
    text = re.sub(r'(?m)^(tls_(?:ca|cert|key)_file\s*=\s*)"[^"]*"', rf'\1"{stand_in}"', text)
    return parse_config(tomllib.loads(text), source)


def shutdown_timeout(config: Config) -> float:
    return config.shutdown_timeout


def admin_addresses(text: str) -> set[str]:
    return {match.group(1) for match in ADMIN_URL.finditer(text)}


# --- the example config ----------------------------------------------------------------------------


def test_the_example_config_is_valid_and_local_only(tmp_path: Path) -> None:
    config = parse_deploy_config(EXAMPLE_CONFIG.read_text(), str(EXAMPLE_CONFIG), tmp_path)

    assert str(config.admin.listen) == "127.0.0.1:9631"
    assert all(pool.listen.is_loopback and pool.tls == "verify-full" for pool in config.pools)
    assert shutdown_timeout(config) == 30.0


# --- Dockerfile and README --------------------------------------------------------------------------


def shell_commands(text: str, program: str) -> list[list[str]]:
    """Every ``program ...`` command in ``text`` (comment markers stripped, ``\\`` lines joined)."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        shlex.split(line.strip()) for line in joined.splitlines() if line.strip().startswith(f"{program} ")
    ]


def readme_deploying_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Deploying\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Deploying' section"
    return match.group(1)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def healthcheck_command() -> list[str]:
    (healthcheck,) = [args for instruction, args in dockerfile_instructions() if instruction == "HEALTHCHECK"]
    command: list[str] = json.loads(healthcheck.split("CMD", 1)[1])
    return command


def test_the_readme_documents_the_dockerfiles_own_commands() -> None:
    section = readme_deploying_section()
    commands = {program: shell_commands(section, program) for program in ("docker build", "docker run")}

    assert len(commands["docker build"]) == len(commands["docker run"]) == 1, commands
    # The Dockerfile's header says the same, word for word.
    header = "".join(line + "\n" for line in DOCKERFILE.read_text().splitlines() if line.startswith("#"))
    assert shell_commands(header, "docker build") == commands["docker build"]
    assert shell_commands(header, "docker run") == commands["docker run"]


def test_the_readme_docker_commands_use_the_dockerfiles_paths_and_ports(tmp_path: Path) -> None:
    section = readme_deploying_section()
    (build,) = shell_commands(section, "docker build")
    (run,) = shell_commands(section, "docker run")

    assert (ROOT / option(build, "-f")) == DOCKERFILE and build[-1] == "."  # context: the repository
    image = option(build, "-t")
    assert run[-1] == image
    # The host's config directory (as systemd's) is where the entry point looks by default.
    assert option(run, "-v").split(":") == ["/etc/rotaproxy", "/etc/rotaproxy", "ro"]
    assert "ROTAPROXY_CONFIG_FILE:-/etc/rotaproxy/rotaproxy.toml" in ENTRYPOINT.read_text()
    # Loopback listeners: the application must share the container's network.
    assert option(run, "--network") == "host"
    # The health check asks the admin address the example config (and the README) sets.
    config = parse_deploy_config(EXAMPLE_CONFIG.read_text(), str(EXAMPLE_CONFIG), tmp_path)
    assert admin_addresses(" ".join(healthcheck_command())) == {str(config.admin.listen)}
    assert f"{config.admin.listen}/healthz" in section


def test_the_dockerfile_runs_unprivileged_and_copies_only_what_exists() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :]

    assert dict(final_stage)["USER"] == "10001:10001"
    assert dict(final_stage)["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(dict(final_stage)["ENTRYPOINT"]) == ["/usr/local/bin/rotaproxy-entrypoint"]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for name, args in instructions:
        if name == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, (
                    f"COPY {source}: excluded from the build context by Dockerfile.dockerignore"
                )


def run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    """The entry point with a stand-in ``rotaproxy`` that prints the arguments it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "rotaproxy"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def test_the_entrypoint_takes_a_mounted_file_the_toml_in_the_environment_or_arguments(
    tmp_path: Path,
) -> None:
    assert run_entrypoint(tmp_path, {}) == ["run", "-c", "/etc/rotaproxy/rotaproxy.toml"]
    assert run_entrypoint(tmp_path, {"ROTAPROXY_CONFIG_FILE": "/cfg/x.toml"}) == ["run", "-c", "/cfg/x.toml"]
    toml = EXAMPLE_CONFIG.read_text()
    written = tmp_path / "rotaproxy.toml"
    assert run_entrypoint(tmp_path, {"ROTAPROXY_CONFIG": toml}) == ["run", "-c", str(written)]
    assert written.read_text() == toml + "\n" and oct(written.stat().st_mode & 0o777) == "0o600"
    assert run_entrypoint(tmp_path, {}, "check-config", "-c", "/x") == ["check-config", "-c", "/x"]


# --- systemd -------------------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key}", []).append(value)
    return directives


def test_the_systemd_unit_is_hardened_and_outlasts_shutdown_timeout(tmp_path: Path) -> None:
    unit = unit_directives(UNIT.read_text())
    config = parse_deploy_config(EXAMPLE_CONFIG.read_text(), str(EXAMPLE_CONFIG), tmp_path)

    def one(key: str) -> str:
        (value,) = unit[key]
        return value

    assert shlex.split(one("Service.ExecStart")) == [
        "/opt/rotaproxy/bin/rotaproxy", "run", "-c", "/etc/rotaproxy/rotaproxy.toml",
    ]  # fmt: skip
    assert shlex.split(one("Service.ExecStartPre"))[1:] == [
        "check-config",
        "-c",
        "/etc/rotaproxy/rotaproxy.toml",
    ]
    assert shlex.split(one("Service.ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert one("Service.KillSignal") == "SIGTERM"
    assert float(one("Service.TimeoutStopSec").removesuffix("s")) > shutdown_timeout(config)
    assert one("Service.Restart") == "on-failure"
    hardening = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }
    assert {key: one(f"Service.{key}") for key in hardening} == hardening
    assert one("Install.WantedBy") == "multi-user.target"


def test_systemd_analyze_verifies_the_unit_and_rates_its_exposure_low(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (scripts/dev installs systemd)"
    # verify checks that ExecStart's program exists: point it at this checkout's rotaproxy.
    unit = tmp_path / "rotaproxy.service"
    rotaproxy = Path(sys.executable).parent / "rotaproxy"
    unit.write_text(UNIT.read_text().replace("/opt/rotaproxy/bin/rotaproxy", str(rotaproxy)))

    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert (verify.returncode, verify.stderr) == (0, "")
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    exposure = re.search(r"Overall exposure level for rotaproxy.service: (\d+\.\d+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, security.stdout[-500:]


# --- IAM policies ---------------------------------------------------------------------------------------


def policy_statements(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text())
    assert document["Version"] == "2012-10-17"
    statements: list[dict[str, Any]] = document["Statement"]
    return statements


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        (
            "rotaproxy-secret-read.json",
            {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret", "kms:Decrypt"},
        ),
        ("rotaproxy-rds-connect.json", {"rds-db:connect"}),
    ],
)
def test_iam_policies_grant_exactly_the_listed_actions_on_named_resources(
    name: str, allowed: set[str]
) -> None:
    statements = policy_statements(DEPLOY / "iam" / name)

    actions = {action for statement in statements for action in as_list(statement["Action"])}
    assert actions == allowed
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "NotPrincipal", "Principal"} & statement.keys()
        for resource in as_list(statement["Resource"]):
            service = resource.split(":")[2]
            assert resource.startswith(f"arn:aws:{service}:REGION:ACCOUNT_ID:"), resource
            assert "*" not in resource, resource
        services = {action.split(":")[0] for action in as_list(statement["Action"])}
        assert services == {statement_service(statement)}


def statement_service(statement: dict[str, Any]) -> str:
    (service,) = {resource.split(":")[2] for resource in as_list(statement["Resource"])}
    return service


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        (
            "rotaproxy-parameter-read.json",
            {"ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "kms:Decrypt"},
        ),
        (
            "rotaproxy-parameter-rotate.json",
            {
                "ssm:GetParameter",
                "ssm:GetParametersByPath",
                "ssm:PutParameter",
                "ssm:DescribeParameters",
                "kms:Decrypt",
                "kms:Encrypt",
                "kms:GenerateDataKey",
            },
        ),
    ],
)
def test_parameter_store_policies_name_the_parameter_its_path_and_kms_only_through_ssm(
    name: str, allowed: set[str]
) -> None:
    statements = policy_statements(DEPLOY / "iam" / name)

    assert {action for s in statements for action in as_list(s["Action"])} == allowed
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "NotPrincipal", "Principal"} & statement.keys()
        for resource in as_list(statement["Resource"]):
            if statement["Action"] == "ssm:DescribeParameters":
                assert resource == "*"  # it has no resource-level permissions
            elif resource.startswith("arn:aws:ssm:"):
                assert re.fullmatch(r"arn:aws:ssm:REGION:ACCOUNT_ID:parameter/[\w/.-]+?(/\*)?", resource)
            else:
                assert statement["Condition"] == {
                    "StringEquals": {"kms:ViaService": "ssm.REGION.amazonaws.com"}
                }
                assert resource == "arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID"


def test_kms_decrypt_is_granted_only_through_secrets_manager() -> None:
    (kms,) = [
        s
        for s in policy_statements(DEPLOY / "iam" / "rotaproxy-secret-read.json")
        if s["Action"] == "kms:Decrypt"
    ]

    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.REGION.amazonaws.com"}}


def test_the_secret_statement_covers_one_secret_and_its_random_suffix() -> None:
    (secret,) = [
        s
        for s in policy_statements(DEPLOY / "iam" / "rotaproxy-secret-read.json")
        if "secretsmanager:GetSecretValue" in as_list(s["Action"])
    ]

    assert re.fullmatch(
        r"arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:[\w/+=.@-]+-\?{6}", secret["Resource"]
    )


# --- CloudFormation ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert not problems and decoded is not None
    return dict(decoded)


def test_cfn_lint_passes_on_the_template() -> None:
    result = subprocess.run(
        [tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def user_data(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script, variables = data["Fn::Base64"]["Fn::Sub"]
    return str(script), dict(variables)


def heredoc(script: str, marker: str) -> str:
    match = re.search(rf"<<'{marker}'\n(.*?)^{marker}$", script, re.MULTILINE | re.DOTALL)
    assert match, f"no {marker} here-document in the user data"
    return match.group(1)


def test_the_user_data_installs_the_systemd_unit_verbatim(template: dict[str, Any]) -> None:
    script, _ = user_data(template)

    assert heredoc(script, "UNIT") == UNIT.read_text()
    assert "systemctl enable --now rotaproxy" in script


@pytest.mark.parametrize("source", ["secretsmanager", "parameterstore"])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_the_user_data_config_is_valid_for_each_engine(
    template: dict[str, Any], engine: str, source: str, tmp_path: Path
) -> None:
    script, variables = user_data(template)
    mapping = template["Mappings"]["EngineDefaults"][engine]
    values = {
        "AWS::Region": "us-east-1",
        "DBName": "orders",
        "Engine": engine,
        "DBEndpoint": "orders.cluster-abc123.us-east-1.rds.amazonaws.com",
        "DBPort": "5432",
        "MaxServerConnections": str(template["Parameters"]["MaxServerConnections"]["Default"]),
        "DatabaseSecret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders-AbCdEf",
        "ParameterName": "/prod/orders/db",
        **{name: str(mapping[name]) for name in variables if name != "CredentialsKeys"},
    }

    def substitute(text: str) -> str:
        return re.sub(r"\$\{([\w:]+)\}", lambda match: values[match.group(1)], text)

    condition, if_secrets_manager, otherwise = variables["CredentialsKeys"]["Fn::If"]
    assert condition == "UseSecretsManager"
    chosen = if_secrets_manager if source == "secretsmanager" else otherwise
    values["CredentialsKeys"] = substitute(chosen["Fn::Sub"])
    toml = substitute(heredoc(script, "TOML"))

    config = parse_deploy_config(toml, "user data", tmp_path)

    (pool,) = config.pools
    assert (pool.engine, pool.listen.port, pool.tls) == (engine, mapping["ListenPort"], "verify-full")
    assert pool.credentials.source == source
    if source == "secretsmanager":
        assert pool.credentials.secret_id == values["DatabaseSecret"]
    else:
        assert pool.credentials.parameter == values["ParameterName"]
    timeout = unit_directives(heredoc(script, "UNIT"))["Service.TimeoutStopSec"][0]
    assert float(timeout.removesuffix("s")) > shutdown_timeout(config)


def test_the_instance_role_reads_only_the_one_secret_or_parameter(template: dict[str, Any]) -> None:
    policies, conditions = {}, {}
    for item in template["Resources"]["InstanceRole"]["Properties"]["Policies"]:
        if "Fn::If" in item:  # one per credential source
            condition, item, otherwise = item["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
            conditions[item["PolicyName"]] = condition
        policies[item["PolicyName"]] = item["PolicyDocument"]
    (read,) = policies["rotaproxy-secret-read"]["Statement"]
    (parameter,) = policies["rotaproxy-parameter-read"]["Statement"]
    (install,) = policies["rotaproxy-install"]["Statement"]

    assert conditions == {
        "rotaproxy-secret-read": "UseSecretsManager",
        "rotaproxy-parameter-read": "UseParameterStore",
    }
    assert set(read["Action"]) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    assert read["Resource"] == {"Ref": "DatabaseSecret"}
    assert set(parameter["Action"]) == {"ssm:GetParameter", "ssm:GetParametersByPath"}
    assert [r["Fn::Sub"].rsplit(":", 1)[1] for r in parameter["Resource"]] == [
        "parameter${ParameterName}",
        "parameter${ParameterName}/*",
    ]
    assert install["Action"] == "s3:GetObject" and "${WheelKey}" in install["Resource"]["Fn::Sub"]


def test_with_parameter_store_nothing_of_secrets_manager_is_made(template: dict[str, Any]) -> None:
    made_only_for_secrets_manager = {
        name
        for name, resource in template["Resources"].items()
        if resource.get("Condition") == "UseSecretsManager"
    }

    assert {name for name in template["Resources"] if "Rotation" in name or "Secret" in name} == {
        "DatabaseSecret",
        "DatabaseSecretRotation",
        "FirstRotationDone",
        "RotationFunction",
        "RotationFunctionPermission",
        "RotationFunctionRole",
        "RotationFunctionSecurityGroup",
        "RotationFunctionToDatabase",
    }
    assert made_only_for_secrets_manager == {
        "DatabaseSecret",
        "DatabaseSecretRotation",
        "RotationFunction",
        "RotationFunctionPermission",
        "RotationFunctionRole",
        "RotationFunctionSecurityGroup",
        "RotationFunctionToDatabase",
    }
    assert "FirstRotationDone" in template["Resources"]["Instance"]["DependsOn"]


def test_the_rotation_function_is_rotaproxys_own(template: dict[str, Any]) -> None:
    function = template["Resources"]["RotationFunction"]["Properties"]
    schedule = template["Resources"]["DatabaseSecretRotation"]["Properties"]

    assert function["Handler"] == "proxy.rotation.lambda_handler"
    assert function["Environment"]["Variables"]["ROTAPROXY_STRATEGY"] == "alternating-users"
    assert function["Environment"]["Variables"]["ROTAPROXY_TLS"] == "verify-full"
    assert schedule["RotationLambdaARN"] == {"Fn::GetAtt": ["RotationFunction", "Arn"]}
    secret_template = template["Resources"]["DatabaseSecret"]["Properties"]["GenerateSecretString"]
    fields = json.loads(re.sub(r"\$\{\w+\}", "0", secret_template["SecretStringTemplate"]["Fn::Sub"]))
    assert set(fields) == {"engine", "host", "port", "dbname", "username", "masterarn"}
    assert secret_template["GenerateStringKey"] == "password"


# --- Kubernetes --------------------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def test_there_are_kubernetes_manifests() -> None:
    assert [path.name for path in MANIFESTS] == ["shared.yaml", "sidecar.yaml"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_validates_against_the_schema(version: str) -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_schema_check_does_reject_a_misspelt_field(tmp_path: Path) -> None:
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(
        MANIFESTS[0].read_text().replace("terminationGracePeriodSeconds", "terminationGracePeriod")
    )

    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode != 0 and "terminationGracePeriod" in result.stdout + result.stderr


def pod_spec(path: Path) -> dict[str, Any]:
    (deployment,) = [d for d in documents(path) if d["kind"] == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def rotaproxy_container(spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == "rotaproxy"
    ]
    return container


def manifest_config(path: Path, tmp_path: Path) -> Config:
    (config_map,) = [d for d in documents(path) if d["kind"] == "ConfigMap"]
    return parse_deploy_config(config_map["data"]["rotaproxy.toml"], f"{path.name} ConfigMap", tmp_path)


def probe_commands(container: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]["exec"]["command"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_probes_reach_the_loopback_admin_api_from_inside_the_container(
    manifest: Path, tmp_path: Path
) -> None:
    config = manifest_config(manifest, tmp_path)
    container = rotaproxy_container(pod_spec(manifest))
    probes = dict(probe_commands(container))

    assert config.admin.listen is not None and config.admin.listen.is_loopback
    assert {"livenessProbe", "readinessProbe"} <= probes.keys()
    for kind, command in probes.items():
        # exec, not httpGet: the kubelet's httpGet would call the Pod's IP, where nothing listens.
        assert command[:2] == ["python", "-c"], kind
        assert admin_addresses(command[2]) == {str(config.admin.listen)}, kind
        compile(command[2], kind, "exec")
    assert "/readyz" in probes["readinessProbe"][2] and "/healthz" in probes["livenessProbe"][2]
    assert container["args"] == ["run", "-c", "/etc/rotaproxy/rotaproxy.toml"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def prestop_sleep(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    return float(command[1]) if command else 0.0


def test_the_sidecar_starts_first_stops_last_and_has_time_to_drain(tmp_path: Path) -> None:
    path = DEPLOY / "kubernetes" / "sidecar.yaml"
    spec = pod_spec(path)
    config = manifest_config(path, tmp_path)
    container = rotaproxy_container(spec)

    # A native sidecar: started before the application containers, stopped after them.
    assert container in spec["initContainers"] and container["restartPolicy"] == "Always"
    assert "startupProbe" in container
    # The application reaches it over a Unix socket in a volume of the two containers alone,
    # and only the application's uid is let in.
    (pool,) = config.pools
    listener, app = pool.listen, spec["containers"][0]
    assert listener.is_unix and listener.path is not None
    folder, name = listener.path.rsplit("/", 1)
    assert f"s.connect('{listener.path}')" in container["startupProbe"]["exec"]["command"][2]
    app_env = {item["name"]: item["value"] for item in app["env"]}
    port = name.removeprefix(".s.PGSQL.")
    assert app_env["DATABASE_URL"].endswith(f"?host={folder}&port={port}")  # (libpq's socket name)
    assert pool.clients.allow_uids == frozenset({app["securityContext"]["runAsUser"]})
    for each in (container, app):
        mounts = {mount["name"]: mount["mountPath"] for mount in each["volumeMounts"]}
        assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "rotaproxy-socket")
        assert mounts["rotaproxy-socket"] == folder
    assert pool.socket_group == spec["securityContext"]["fsGroup"] and pool.socket_mode == 0o660
    # The application's own drain (its default 30s), then rotaproxy's shutdown_timeout.
    assert spec["terminationGracePeriodSeconds"] > 30 + shutdown_timeout(config)
    service_account = next(d for d in documents(path) if d["kind"] == "ServiceAccount")
    assert service_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::"
    )
    assert spec["serviceAccountName"] == service_account["metadata"]["name"]


def test_the_shared_deployment_drains_in_step_and_states_its_connection_budget(tmp_path: Path) -> None:
    path = DEPLOY / "kubernetes" / "shared.yaml"
    spec = pod_spec(path)
    config = manifest_config(path, tmp_path)
    containers = {container["name"]: container for container in spec["containers"]}
    rotaproxy_stops_at = prestop_sleep(containers["rotaproxy"]) + shutdown_timeout(config)

    assert prestop_sleep(containers["rotaproxy"]) >= 5  # the endpoint leaves the Service first
    assert spec["terminationGracePeriodSeconds"] > rotaproxy_stops_at
    # The budget the comment states is the one the manifests make.
    (deployment,) = [d for d in documents(path) if d["kind"] == "Deployment"]
    replicas = deployment["spec"]["replicas"] + deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    (pool,) = config.pools
    assert f"= {pool.max_server_connections * replicas}." in path.read_text()


def test_the_shared_deployment_listens_on_the_pod_ip_with_client_auth_and_tls(tmp_path: Path) -> None:
    path = DEPLOY / "kubernetes" / "shared.yaml"
    spec = pod_spec(path)
    config = manifest_config(path, tmp_path)  # (rotaproxy's own parser: beyond loopback only like this)
    container = rotaproxy_container(spec)
    (pool,) = config.pools

    # rotaproxy itself serves the Pod IP: no forwarder in front of a loopback listener.
    assert [c["name"] for c in spec["containers"]] == ["rotaproxy"]
    assert not pool.listen.is_loopback
    assert pool.clients.auth in ("password", "cert") and pool.clients.tls == "require"
    assert pool.clients.auth != "password" or pool.clients.secret_id
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["postgres"] == pool.listen.port
    (service,) = [d for d in documents(path) if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "postgres"
    # The certificate and key come from a Kubernetes TLS Secret mounted where the config reads them.
    text = path.read_text()
    cert_dir = re.search(r'tls_cert_file = "(/[^"]+)/tls\.crt"', text)
    assert cert_dir is not None and f'tls_key_file = "{cert_dir.group(1)}/tls.key"' in text
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (tls_volume,) = [name for name, mount in mounts.items() if mount == cert_dir.group(1)]
    assert "secretName" in volumes[tls_volume]["secret"]
    assert spec["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    # The NetworkPolicy still narrows who may try (defence in depth).
    (policy,) = [d for d in documents(path) if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": pool.listen.port}]


# --- ECS ----------------------------------------------------------------------------------------------


def test_the_ecs_task_runs_rotaproxy_as_a_healthy_first_sidecar(tmp_path: Path) -> None:
    task = json.loads(TASK_DEFINITION.read_text())
    containers = {container["name"]: container for container in task["containerDefinitions"]}
    rotaproxy = containers["rotaproxy"]
    environment = {item["name"]: item["value"] for item in rotaproxy["environment"]}
    config = parse_deploy_config(environment["ROTAPROXY_CONFIG"], "ECS ROTAPROXY_CONFIG", tmp_path)

    assert task["networkMode"] == "awsvpc"  # one network namespace: the task's 127.0.0.1
    assert rotaproxy["healthCheck"]["command"] == ["CMD", *healthcheck_command()]
    assert admin_addresses(" ".join(healthcheck_command())) == {str(config.admin.listen)}
    assert containers["app"]["dependsOn"] == [{"containerName": "rotaproxy", "condition": "HEALTHY"}]
    assert shutdown_timeout(config) < rotaproxy["stopTimeout"] <= 120
    assert rotaproxy["user"] == "10001:10001"
    assert task["taskRoleArn"].startswith("arn:aws:iam::")


def test_no_deploy_file_holds_anything_like_a_password() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"(?im)^\s*password\s*=", text), path
            assert "AKIA" not in text, path
    assert os.access(ENTRYPOINT, os.X_OK)
