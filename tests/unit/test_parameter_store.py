"""Parameter Store as a credential source, without a server: the config keys, the words for each
AWS error, and the refusal of single-user rotation (config, rotator and command line)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.cli import main
from proxy.config import ConfigError, CredentialsConfig, parse_config
from proxy.credentials.parameter_store import parameter_problem
from proxy.rotation.errors import RotationError
from proxy.rotation.parameter_store import ParameterStoreRotator, refuse_single_user
from proxy.rotation.secret import SecretValue
from proxy.rotation.settings import RotationSettings


def pool(credentials: dict[str, Any]) -> dict[str, Any]:
    return {"pool": [{"name": "orders", "upstream": "db:5432", "credentials": credentials}]}


def test_a_parameterstore_pool_names_its_parameter() -> None:
    config = parse_config(
        pool({"source": "parameterstore", "parameter": "/prod/orders/db", "poll_interval": "5s"}), "f.toml"
    )

    credentials = config.pools[0].credentials
    assert credentials == CredentialsConfig(
        source="parameterstore", parameter="/prod/orders/db", poll_interval=5.0
    )
    assert credentials.description == "parameter '/prod/orders/db'"


@pytest.mark.parametrize(
    ("credentials", "key", "why"),
    [
        ({"source": "parameterstore"}, "parameter", 'required when source = "parameterstore"'),
        (
            {"source": "parameterstore", "parameter": ""},
            "parameter",
            'required when source = "parameterstore"',
        ),
        (
            {"source": "parameterstore", "parameter": "/p", "secret_id": "s"},
            "secret_id",
            'not used when source = "parameterstore"',
        ),
        ({"secret_id": "s", "parameter": "/p"}, "parameter", 'only used when source = "parameterstore"'),
        ({"source": "parameterstore", "parameter": 5}, "parameter", "expected str, got int"),
    ],
)
def test_parameterstore_config_errors_name_the_key(credentials: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(pool(credentials), "f.toml")

    assert info.value.key == f"pool[0].credentials.{key}"
    assert why in info.value.why


@pytest.mark.parametrize(
    ("code", "message", "words"),
    [
        ("ParameterNotFound", "", "the parameter does not exist (ParameterNotFound)"),
        (
            "AccessDeniedException",
            "User: arn:aws:iam::1:user/app is not authorized to perform: ssm:GetParameter",
            "access denied (check the IAM policy: ssm:GetParameter, ssm:GetParametersByPath): User:",
        ),
        (
            "AccessDeniedException",
            "The ciphertext refers to a customer master key that does not exist ... (Service: AWSKMS)",
            "KMS refused to decrypt the SecureString (check kms:Decrypt on its key)",
        ),
        (
            "AccessDeniedException",
            "User is not authorized to perform: kms:Decrypt on resource: arn:aws:kms:...",
            "KMS refused to decrypt the SecureString (check kms:Decrypt on its key)",
        ),
        ("InvalidKeyId", "key disabled", "KMS refused to decrypt the SecureString (InvalidKeyId"),
    ],
)
def test_each_ssm_error_is_worded(code: str, message: str, words: str) -> None:
    problem = parameter_problem(code, message)

    assert problem is not None and problem.startswith(words)


def test_an_unknown_ssm_error_is_left_to_the_generic_words() -> None:
    assert parameter_problem("ThrottlingException", "Rate exceeded") is None


def test_a_parameter_version_is_named_as_such_in_rotation_errors() -> None:
    value = SecretValue.of_fields(
        "/prod/db", "7", "newest", {"username": "app", "password": "x" * 12}, "parameter"
    )

    assert value.where == "version 7 of parameter '/prod/db'"
    assert "x" * 12 not in repr(value)


def test_single_user_rotation_is_refused_with_the_window_it_would_open() -> None:
    with pytest.raises(RotationError) as info:
        ParameterStoreRotator(None, None, RotationSettings(strategy="single-user", tls="disable"))

    assert "no AWSPENDING" in str(info.value) and "alternating-users" in str(info.value)
    refuse_single_user("alternating-users")  # the one it takes


def test_rotate_command_refuses_single_user_for_parameter_store(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["rotate", "--source", "parameterstore", "--parameter", "/prod/db", "--strategy", "single-user"]
    )

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("rotaproxy: rotate: single-user rotation is refused for Parameter Store")
    assert "every login in between" in error


@pytest.mark.parametrize(
    "argv",
    [
        ["rotate", "--source", "parameterstore"],
        ["rotate", "--source", "parameterstore", "--parameter", "/p", "--secret-id", "s"],
        ["rotate", "--parameter", "/p"],
        ["rotate", "--source", "parameterstore", "--parameter", "/p", "--pause-after", "setSecret", "1s"],
    ],
)
def test_rotate_command_checks_which_source_takes_which_name(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("rotaproxy: rotate: ")
