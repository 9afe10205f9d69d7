"""The Kafka transport's broker security settings become aiokafka's own arguments (issue 15).

TLS is also proven end to end (tests/e2e/test_kafka_tls_e2e.py). SASL is not: Tansu 0.6.0, the test
broker, refuses the SCRAM users ``tansu user create`` makes (aiokafka: KeyError 'v' in the server's
final message) and offers no PLAIN; see the README's Security section.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from hostd_kafka.plugin import KafkaSettings
from pydantic import ValidationError


def test_plaintext_by_default() -> None:
    assert KafkaSettings().security(Path(".")) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_a_ca_and_a_password_file(tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "kafka.password").write_text("s3cret\n")
    settings = KafkaSettings(security_protocol="SASL_SSL", ssl_cafile="ca.pem", sasl_mechanism="SCRAM-SHA-512",
                             sasl_username="hostd", sasl_password_file="kafka.password")
    options = settings.security(tmp_path)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "hostd", "sasl_plain_password": "s3cret"}


def test_sasl_needs_a_user_and_exactly_one_password() -> None:
    with pytest.raises(ValidationError, match="needs sasl_username and one of sasl_password or sasl_password_file"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="hostd")
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="hostd", sasl_password="a",
                      sasl_password_file="b")
