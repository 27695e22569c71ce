"""One redaction rule for everything echoed or written: an allow-list of public option names,
URL user info, and the values of credential-looking environment variables."""

from __future__ import annotations

from action_ray.config import load_config
from action_ray.urls import redact, secret_option_values


def test_options_are_masked_unless_their_name_is_public():
    options = {"endpoint_url": "http://127.0.0.1:9000", "anon": False, "key": "AKIA-SECRET-1",
               "SSECustomerKey": "sse-secret-2", "client_kwargs": {"region_name": "eu-west-1",
                                                                    "aws_session_token": "tok-secret-3"},
               "s3_additional_kwargs": {"SSECustomerKey": "sse-secret-4", "ACL": "private"}}
    shown = redact(options)
    assert shown["endpoint_url"] == "http://127.0.0.1:9000" and shown["anon"] is False
    assert shown["key"] == shown["SSECustomerKey"] == "***"
    assert shown["client_kwargs"] == {"region_name": "eu-west-1", "aws_session_token": "***"}
    assert shown["s3_additional_kwargs"]["SSECustomerKey"] == "***"
    assert "secret" not in repr(shown)
    assert sorted(secret_option_values(options)) == sorted(
        ["AKIA-SECRET-1", "sse-secret-2", "tok-secret-3", "sse-secret-4", "private"])


def test_urls_env_values_and_given_secrets_are_masked_in_text(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tkn-987654")
    monkeypatch.setenv("HOME_DIR_SIZE", "123456")  # not a credential name: left alone
    text = "s3://user:pa55word@bucket/x failed with env-secret-value and tkn-987654 at 123456 sse-secret-2"
    out = redact(text, ["sse-secret-2"])
    assert out == "s3://***@bucket/x failed with *** and *** at 123456 ***"


def test_config_echo_and_file_never_hold_option_secrets():
    config = load_config("cpu-demo", ["data.storage_options={SSECustomerKey: sse-secret-5, endpoint_url: http://h:1}"])
    for text in (config.to_yaml(), config.pretty()):
        assert "sse-secret-5" not in text and "http://h:1" in text
