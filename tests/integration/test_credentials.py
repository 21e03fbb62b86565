"""Credential sources against a real local Secrets Manager (moto's server through aioboto3),
and the redaction that keeps secret values out of errors, reprs and log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import botocore.auth
import pytest

from proxy.config import AwsConfig, CredentialsConfig
from proxy.credentials import rds_iam
from proxy.credentials.base import ERROR_RETRY_INTERVAL, Credentials, CredentialsError
from proxy.credentials.rds_iam import RdsIamSource
from proxy.credentials.secrets_manager import (
    SecretsManagerClients,
    SecretsManagerSource,
    credentials_from_secret_string,
)
from proxy.credentials.sources import make_source
from proxy.credentials.static import StaticCredentialSource
from proxy.local.secrets_manager import LocalSecretsManager, create_secret, put_secret_json
from proxy.redaction import MASK, RedactingFilter, redact, register_secret
from tests.conftest import Secrets, new_secret

SECRET_ID = "prod/orders/postgres"


def secret_json(password: str, **extra: object) -> str:
    return json.dumps({"username": "app", "password": password, **extra})


def assert_no_leak(error: BaseException, *markers: str) -> None:
    """Neither the message nor the printed traceback (chained causes included) shows a marker."""
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if isinstance(error, CredentialsError):
        shown += [error.source, error.problem]
    for text in shown:
        for marker in markers:
            assert marker not in text, f"{marker!r} leaked into {text!r}"


# --- decoding a secret's text ---------------------------------------------------------------


@pytest.mark.parametrize("port", [5432, "5432"])
def test_full_rds_secret_decodes(known_secrets: Secrets, port: object) -> None:
    password = known_secrets.new_password()
    text = json.dumps(
        {
            "engine": "postgres",
            "host": "db.internal",
            "port": port,
            "username": "app",
            "password": password,
            "dbname": "orders",
            "dbClusterIdentifier": "orders-cluster",
        }
    )

    credentials = credentials_from_secret_string(SECRET_ID, text, "v-1", "AWSCURRENT")

    assert credentials == Credentials(
        username="app",
        password=password,
        host="db.internal",
        port=5432,
        dbname="orders",
        engine="postgres",
        version_id="v-1",
        stage="AWSCURRENT",
    )


def test_optional_fields_of_the_wrong_type_are_ignored(known_secrets: Secrets) -> None:
    password = known_secrets.new_password()
    text = json.dumps({"username": "app", "password": password, "host": 5, "dbname": None, "engine": []})

    credentials = credentials_from_secret_string(SECRET_ID, text, None, None)

    assert (credentials.host, credentials.port, credentials.dbname, credentials.engine) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda m: json.dumps({"username": "app", "host": m}), "lacks a string 'password'"),
        (lambda m: json.dumps({"username": "app", "password": "", "host": m}), "lacks a string 'password'"),
        (lambda m: json.dumps({"password": m, "dbname": m + "-db"}), "lacks a string 'username'"),
        (lambda m: json.dumps({"user": "app", "pass": m}), "lacks a string 'username' and 'password'"),
        (
            lambda m: json.dumps({"username": "app", "password": 12345, "host": m}),
            "lacks a string 'password'",
        ),
        (lambda m: f"username=app password={m}", "SecretString is not valid JSON"),
        (lambda m: '{"username": "app", "password": "' + m, "SecretString is not valid JSON"),
        (lambda m: json.dumps(["app", m]), "SecretString is JSON but not an object"),
        (lambda m: json.dumps(m), "SecretString is JSON but not an object"),
        (
            lambda m: json.dumps({"username": "app", "password": m, "port": f"port-{m}"}),
            "the secret's 'port' is not a valid port number",
        ),
        (
            lambda m: json.dumps({"username": "app", "password": m, "port": [5432]}),
            "the secret's 'port' is not a valid port number",
        ),
        (
            lambda m: json.dumps({"username": "app", "password": m, "port": "5432.0"}),
            "the secret's 'port' is not a valid port number",
        ),
    ],
)
def test_a_bad_secret_names_the_secret_and_never_its_text(
    known_secrets: Secrets, build: Any, problem: str
) -> None:
    marker = known_secrets.new_password()
    text = build(marker)

    with pytest.raises(CredentialsError) as info:
        credentials_from_secret_string(SECRET_ID, text, "v-1", "AWSCURRENT")

    error = info.value
    assert str(error) == f"cannot get credentials from secret {SECRET_ID!r}: {error.problem}"
    assert problem in error.problem
    assert_no_leak(error, marker, text)


def test_a_binary_secret_is_refused() -> None:
    with pytest.raises(CredentialsError) as info:
        credentials_from_secret_string(SECRET_ID, None, "v-1", "AWSCURRENT")

    assert SECRET_ID in str(info.value)
    assert "no SecretString (binary secrets are not supported)" in info.value.problem


@pytest.mark.parametrize("port", ["70000", "0", "-1", "true", "1e400"])
def test_a_port_out_of_range_is_refused(known_secrets: Secrets, port: str) -> None:
    marker = known_secrets.new_password()
    text = f'{{"username": "app", "password": "{marker}", "port": {port}}}'

    with pytest.raises(CredentialsError) as info:
        credentials_from_secret_string(SECRET_ID, text, None, None)

    assert_no_leak(info.value, marker)


def test_decoding_registers_the_password_for_redaction(known_secrets: Secrets) -> None:
    password = known_secrets.new_password()

    credentials_from_secret_string(SECRET_ID, secret_json(password), None, None)

    assert redact(f"login failed for app with {password}") == f"login failed for app with {MASK}"


def test_credentials_repr_and_str_hide_the_password(known_secrets: Secrets) -> None:
    password = known_secrets.new_password()
    credentials = Credentials("app", password, host="db.internal", port=5432, version_id="v-1")

    for text in (
        repr(credentials),
        str(credentials),
        f"{credentials}",
        f"{credentials!r}",
        repr([credentials]),
    ):
        assert password not in text
        assert "username='app'" in text and "db.internal" in text


# --- static source --------------------------------------------------------------------------


async def test_static_source_returns_its_credentials(known_secrets: Secrets) -> None:
    password = known_secrets.new_password()
    config = CredentialsConfig(source="static", username="app", password=password)
    clients = SecretsManagerClients(AwsConfig())

    source = make_source(config, clients)

    assert isinstance(source, StaticCredentialSource)
    assert await source.current() == Credentials("app", password)
    assert await source.refresh() == Credentials("app", password)
    assert (source.fetches, source.errors) == (2, 0)
    assert source.description == "static credentials for user 'app'"
    assert redact(password) == MASK
    await source.close()
    await clients.close()


def test_static_source_needs_username_and_password() -> None:
    with pytest.raises(ValueError, match="username and a password"):
        StaticCredentialSource(CredentialsConfig(source="static", username="app"))


# --- Secrets Manager source, against moto's server ------------------------------------------


@pytest.fixture
async def clients(sm: LocalSecretsManager) -> AsyncIterator[SecretsManagerClients]:
    clients = SecretsManagerClients(AwsConfig(endpoint_url=sm.endpoint_url, region=sm.region))
    yield clients
    await clients.close()


def sm_source(secret_id: str, clients: SecretsManagerClients) -> SecretsManagerSource:
    source = make_source(CredentialsConfig(source="secretsmanager", secret_id=secret_id), clients)
    assert isinstance(source, SecretsManagerSource)
    return source


async def test_fetches_a_secret_from_secrets_manager(
    sm_client: Any, clients: SecretsManagerClients, known_secrets: Secrets
) -> None:
    password = known_secrets.new_password()
    secret_id = await new_secret(
        sm_client,
        {
            "engine": "postgres",
            "host": "db.internal",
            "port": 5432,
            "username": "app",
            "password": password,
            "dbname": "orders",
        },
    )
    source = sm_source(secret_id, clients)

    credentials = await source.current()

    assert (credentials.username, credentials.password) == ("app", password)
    assert (credentials.host, credentials.port, credentials.dbname) == ("db.internal", 5432, "orders")
    assert credentials.stage == "AWSCURRENT"
    assert (source.fetches, source.errors) == (1, 0)
    assert source.description == f"secret {secret_id!r}"


async def test_refresh_picks_up_a_new_awscurrent_version_and_current_keeps_the_cache(
    sm_client: Any, clients: SecretsManagerClients, known_secrets: Secrets
) -> None:
    secret_id = f"test/{secrets.token_hex(4)}"
    first_password, second_password = known_secrets.new_password(), known_secrets.new_password()
    first_version = await create_secret(sm_client, secret_id, {"username": "app", "password": first_password})
    source = sm_source(secret_id, clients)

    first = await source.current()
    assert (first.version_id, first.password) == (first_version, first_password)

    second_version = await put_secret_json(
        sm_client, secret_id, {"username": "app", "password": second_password}
    )
    assert second_version != first_version
    # A pending version must not be picked up by a refresh: only AWSCURRENT counts.
    await put_secret_json(
        sm_client, secret_id, {"username": "app", "password": known_secrets.new_password()}, ["AWSPENDING"]
    )

    assert await source.current() is first
    assert source.fetches == 1

    refreshed = await source.refresh()
    assert (refreshed.version_id, refreshed.password) == (second_version, second_password)
    assert await source.current() is refreshed
    assert source.fetches == 2


async def test_concurrent_callers_share_one_fetch(
    sm_client: Any, clients: SecretsManagerClients, known_secrets: Secrets
) -> None:
    password = known_secrets.new_password()
    secret_id = await new_secret(sm_client, {"username": "app", "password": password})
    source = sm_source(secret_id, clients)

    results = await asyncio.gather(*(source.current() for _ in range(20)))

    assert source.fetches == 1
    assert all(result is results[0] for result in results)
    assert results[0].password == password


async def test_a_missing_secret_fails_then_is_rate_limited_then_retried(
    sm_client: Any, clients: SecretsManagerClients, known_secrets: Secrets
) -> None:
    secret_id = f"test/missing-{secrets.token_hex(4)}"
    source = sm_source(secret_id, clients)

    with pytest.raises(CredentialsError) as first:
        await source.current()
    assert str(first.value) == f"cannot get credentials from secret {secret_id!r}: the secret does not exist"
    assert (source.fetches, source.errors) == (0, 1)

    # The secret appears, but within the retry interval callers get the remembered error
    # without a new request: proof that nothing was fetched.
    password = known_secrets.new_password()
    await create_secret(sm_client, secret_id, {"username": "app", "password": password})
    with pytest.raises(CredentialsError) as second:
        await source.current()
    assert second.value is first.value
    assert (source.fetches, source.errors) == (0, 1)

    await asyncio.sleep(ERROR_RETRY_INTERVAL + 0.05)

    credentials = await source.current()
    assert credentials.password == password
    assert (source.fetches, source.errors) == (1, 1)


async def test_an_unreachable_secrets_manager_is_reported_and_cached_credentials_stay(
    sm: LocalSecretsManager, sm_client: Any, clients: SecretsManagerClients, known_secrets: Secrets
) -> None:
    password = known_secrets.new_password()
    secret_id = await new_secret(sm_client, {"username": "app", "password": password})
    warm = sm_source(secret_id, clients)
    cached = await warm.current()
    # Fresh clients: no cached AWS client, no cached credentials.
    cold_clients = SecretsManagerClients(AwsConfig(endpoint_url=sm.endpoint_url, region=sm.region))
    cold = sm_source(secret_id, cold_clients)

    sm.stop()
    try:
        with pytest.raises(CredentialsError) as info:
            await cold.current()
        assert "Secrets Manager unreachable" in info.value.problem
        assert info.value.source == f"secret {secret_id!r}"
        assert_no_leak(info.value, password)
        assert (cold.fetches, cold.errors) == (0, 1)
        # Already-loaded credentials keep working while Secrets Manager is down.
        assert await warm.current() is cached
    finally:
        sm.start()  # the server is shared by the whole session
    try:
        # The same AWS client recovers once the endpoint is back.
        recovered = sm_source(secret_id, cold_clients)
        assert (await recovered.current()).password == password
    finally:
        await cold_clients.close()


# --- redaction in log lines -----------------------------------------------------------------

REDACTED_SECRET = "s3cr3t-value"


@pytest.fixture
def log_capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test_credentials.redaction.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    register_secret(REDACTED_SECRET)
    yield logger, stream
    logger.removeHandler(handler)
    handler.close()


def test_a_registered_secret_is_masked_in_log_messages(
    log_capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_capture

    logger.warning("upstream said: password %s rejected", REDACTED_SECRET)
    logger.info(f"inline {REDACTED_SECRET} too")

    assert stream.getvalue().splitlines() == [
        f"WARNING {logger.name}: upstream said: password {MASK} rejected",
        f"INFO {logger.name}: inline {MASK} too",
    ]


def test_a_registered_secret_is_masked_in_exception_text(
    log_capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_capture

    try:
        raise RuntimeError(f"driver echoed {REDACTED_SECRET}")
    except RuntimeError:
        logger.exception("upstream login failed")

    output = stream.getvalue()
    assert output.startswith(
        f"ERROR {logger.name}: upstream login failed\nTraceback (most recent call last):"
    )
    assert f"RuntimeError: driver echoed {MASK}" in output
    assert REDACTED_SECRET not in output


def test_exception_text_with_a_percent_sign_is_masked_not_lost(
    log_capture: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    logger, stream = log_capture

    try:
        raise RuntimeError(f"100% sure the password is {REDACTED_SECRET}")
    except RuntimeError:
        logger.exception("query %s failed", "q1")

    assert REDACTED_SECRET not in capsys.readouterr().err
    assert "query q1 failed\nTraceback" in stream.getvalue()
    assert f"RuntimeError: 100% sure the password is {MASK}" in stream.getvalue()


def test_short_values_are_not_registered() -> None:
    # Masking "app" or "12345" would mangle ordinary log lines.
    register_secret("12345")

    assert redact("port 12345 open") == "port 12345 open"


# --- RDS IAM tokens (signed locally: no server involved) ----------------------------------------

IAM_HOST = "orders.cluster-x.eu-west-1.rds.amazonaws.com"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Environment credentials and nothing else of the chain (no profile, no instance role)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


@pytest.fixture
async def iam_source(aws_env: None) -> AsyncIterator[RdsIamSource]:
    source = make_source(
        CredentialsConfig(source="rds-iam", username="app", region="eu-west-1"),
        SecretsManagerClients(AwsConfig(region="us-east-1")),
    )
    assert isinstance(source, RdsIamSource)
    yield source
    await source.close()


async def test_rds_iam_credentials_make_a_token_per_host_and_port(
    iam_source: RdsIamSource, known_secrets: Secrets
) -> None:
    credentials = await iam_source.current()
    token = await credentials.login_password(IAM_HOST, 5432, encrypted=True)
    known_secrets.values.add(token)

    assert token.startswith(f"{IAM_HOST}:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert "/eu-west-1/rds-db/aws4_request" in unquote(token)  # [pool.credentials] region wins
    assert "X-Amz-Expires=900" in token
    assert await credentials.login_password(IAM_HOST, 5432, encrypted=True) == token  # cached
    other_port = await credentials.login_password(IAM_HOST, 5433, encrypted=True)
    known_secrets.values.add(other_port)
    assert other_port.startswith(f"{IAM_HOST}:5433/")
    assert iam_source.tokens_signed == 2
    # One version for the life of the source: a token is no rotation.
    assert (credentials.version_id, (await iam_source.refresh()).version_id) == ("rds-iam", "rds-iam")
    assert await iam_source.check_now() is False


async def test_rds_iam_tokens_never_show_in_reprs_or_state_and_are_masked_in_logs(
    iam_source: RdsIamSource, known_secrets: Secrets
) -> None:
    credentials = await iam_source.current()
    token = await credentials.login_password(IAM_HOST, 5432, encrypted=True)
    known_secrets.values.add(token)
    shown = [repr(credentials), str(credentials), repr(iam_source._tokens), json.dumps(iam_source.state())]
    assert not [text for text in shown if token in text or "X-Amz-Signature" in text]
    assert redact(f"login with {token}") == f"login with {MASK}"


async def test_replaced_rds_iam_tokens_are_unmasked_once_expired_but_never_one_in_use(
    iam_source: RdsIamSource, known_secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    signing_times = iter(datetime(2030, 1, 1, 12, minute) for minute in (0, 1, 1))
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: next(signing_times))
    monkeypatch.setattr(rds_iam, "TOKEN_LIFETIME", 0.0)  # each token expires at once
    iam_source.token_reuse = 0.0  # and every login signs a new one
    credentials = await iam_source.current()

    first, second, same_second = [
        await credentials.login_password(IAM_HOST, 5432, encrypted=True) for _ in range(3)
    ]
    known_secrets.values.update({first, second})

    assert first != second == same_second  # X-Amz-Date is to the second
    assert redact(first) == first  # expired and replaced: no longer worth masking
    assert redact(second) == MASK  # its replacement is the very same string, in use
    assert iam_source.tokens_signed == 3


async def test_rds_iam_token_is_never_handed_out_without_tls(iam_source: RdsIamSource) -> None:
    credentials = await iam_source.current()

    with pytest.raises(CredentialsError, match="refusing to send a token to db:5432 without TLS"):
        await credentials.login_password("db", 5432, encrypted=False)
    assert iam_source.tokens_signed == 0


async def test_rds_iam_without_aws_credentials_names_the_chain(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    source = RdsIamSource(CredentialsConfig(source="rds-iam", username="app"), AwsConfig(region="eu-west-1"))
    credentials = await source.current()

    with pytest.raises(CredentialsError, match=r"no AWS credentials found \(instance profile, ECS task role"):
        await credentials.login_password(IAM_HOST, 5432, encrypted=True)
    assert (source.errors, source.tokens_signed) == (1, 0)
    assert source.last_error is not None and "no AWS credentials" in source.last_error
    await source.close()


async def test_rds_iam_without_a_region_says_where_to_set_one(aws_env: None) -> None:
    source = RdsIamSource(CredentialsConfig(source="rds-iam", username="app"), AwsConfig())

    with pytest.raises(
        CredentialsError, match=r"no AWS region .*\[pool.credentials\] region, \[aws\] region"
    ):
        await source.current()
    await source.close()


async def test_rds_iam_region_defaults_to_the_aws_table(aws_env: None, known_secrets: Secrets) -> None:
    source = RdsIamSource(CredentialsConfig(source="rds-iam", username="app"), AwsConfig(region="ap-south-1"))
    token = await (await source.current()).login_password(IAM_HOST, 5432, encrypted=True)
    known_secrets.values.add(token)

    assert "/ap-south-1/rds-db/aws4_request" in unquote(token)
    await source.close()
