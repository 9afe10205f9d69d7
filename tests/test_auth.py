"""hostd.auth: keys by hash, scopes, model allow-lists and the rate limit; hostd.tls: the server context."""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from hostd.auth import ANONYMOUS, Guard, Scope, new_key
from hostd.configfile import parse_settings
from hostd.errors import ConfigError, ConfigErrors, Forbidden, RateLimited, Unauthenticated
from hostd.settings import AuthSettings, RateLimitSettings
from hostd.tls import TlsSettings, server_context


def guard(rate: RateLimitSettings | None = None, **key: object) -> Guard:
    entry = {"name": "web", "sha256": hashlib.sha256(b"k-web").hexdigest(), "scopes": ["infer"], **key}
    return Guard(AuthSettings.model_validate({"keys": [entry]}), rate)


def test_a_key_is_found_by_its_hash_and_never_kept() -> None:
    checked = guard()
    assert checked.authenticate("k-web").name == "web"
    assert b"k-web" not in repr(checked.__dict__).encode()
    with pytest.raises(Unauthenticated, match="not valid"):
        checked.authenticate("k-other")
    with pytest.raises(Unauthenticated, match="required"):
        checked.authenticate(None)


def test_scopes_and_the_model_allow_list() -> None:
    checked = guard(models=["iris_model"])
    assert checked.check("k-web", Scope.INFER, "iris_model").name == "web"
    with pytest.raises(Forbidden, match="lacks the 'read' scope"):
        checked.check("k-web", Scope.READ)
    with pytest.raises(Forbidden, match="may not use model 'digits_model'"):
        checked.check("k-web", Scope.INFER, "digits_model")


def test_without_keys_everyone_is_anonymous_and_rate_limited_by_address() -> None:
    checked = Guard(None, RateLimitSettings(per_s=0.001, burst=2))
    assert checked.check(None, Scope.ADMIN, peer="10.0.0.1") is ANONYMOUS
    checked.check(None, Scope.INFER, peer="10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        checked.check(None, Scope.INFER, peer="10.0.0.1")
    assert caught.value.retry_after_s > 1
    checked.check(None, Scope.INFER, peer="10.0.0.2")  # another address, its own bucket


def test_a_hash_file_and_a_new_key(tmp_path: Path) -> None:
    key, digest = new_key()
    (tmp_path / "web.sha256").write_text(digest + "\n")
    checked = Guard(AuthSettings.model_validate({"keys": [{"name": "web", "sha256_file": "web.sha256"}]}),
                    base=tmp_path)
    assert checked.authenticate(key).scopes == {Scope.INFER, Scope.READ}
    (tmp_path / "web.sha256").write_text("not hex")
    with pytest.raises(ConfigError, match="does not hold a SHA-256 hex digest"):
        Guard(AuthSettings.model_validate({"keys": [{"name": "web", "sha256_file": "web.sha256"}]}), base=tmp_path)


def test_two_entries_with_one_key_are_a_config_error_naming_both(tmp_path: Path) -> None:
    # Else a key would be whichever entry came last: "read" silently limited to iris, say.
    digest = hashlib.sha256(b"k-read").hexdigest()
    (tmp_path / "iris.sha256").write_text(digest.upper() + "\n")  # the same hash, written otherwise
    config = tmp_path / "host.yaml"
    settings = parse_settings(f"""\
models: [{{class_path: tests.support.toy:EchoModel}}]
auth:
  keys:
    - {{name: read, sha256: "{digest}", scopes: [read]}}
    - {{name: web, sha256: "{hashlib.sha256(b"k-web").hexdigest()}"}}
    - {{name: iris, sha256_file: iris.sha256, models: [iris]}}
""", str(config))
    with pytest.raises(ConfigError) as caught:
        Guard.of(settings)
    assert str(caught.value) == (f"{config}:6: auth.keys: key 'iris' is the same key as 'read' (at {config}:4): "
                                 "each entry needs a key of its own")
    keys = [{"name": name, "sha256": digest} for name in ("a", "b", "c")]
    with pytest.raises(ConfigErrors) as several:  # every one, as other config errors are
        Guard(AuthSettings.model_validate({"keys": keys}))
    assert [str(error) for error in several.value.errors] == [
        f"auth.keys: key '{name}' is the same key as 'a': each entry needs a key of its own" for name in "bc"]


def test_the_tls_context_and_a_key_readable_by_others(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    settings = TlsSettings(cert="server.pem", key="server.key", client_ca="ca.pem", require_client_cert=True)
    os.chmod(tmp_path / "server.key", 0o600)
    with capture_logs() as logs:
        context = server_context(settings, tmp_path, ["h2"])
    assert context.verify_mode is ssl.CERT_REQUIRED and logs == []
    os.chmod(tmp_path / "server.key", 0o644)
    with capture_logs() as logs:
        server_context(settings, tmp_path, ["h2"])
    assert [line["event"] for line in logs] == ["a private key file is readable by other users; chmod 600 it"]
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        server_context(TlsSettings(cert="missing.pem", key="server.key"), tmp_path, ["h2"])
