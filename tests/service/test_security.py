"""service/security.py on real files: the token file and the TLS files, what they accept,
how they follow changes, and the start-up errors that name a bad file.

The servers that use them are tested in test_secure_server.py.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.errors import Unauthenticated
from service.security import (
    MISSING_TOKEN,
    NOT_BEARER,
    REFUSED_TOKEN,
    Security,
    ServerTls,
    TokenFile,
)
from service.settings import ConfigError, Settings
from tests.service.certs import CertificateAuthority, kubelet_secret_dir

TOKEN = "tok-3f1c9a7e52b04d8e"
OTHER = "tok-0000000000000000"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("test CA")


def _tokens(tmp_path: Path, text: str) -> TokenFile:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    return TokenFile(path)


def _refused(tokens: TokenFile, authorization: str | None, api_key: str | None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate(authorization, api_key)
    return caught.value.message


# ---- tokens ------------------------------------------------------------------------------


def test_tokens_one_per_line_with_comments(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path, f"# team a\n\n  {TOKEN}  \nsecond-token\n#{OTHER}\n")
    assert tokens.accepts(TOKEN) and tokens.accepts("second-token")
    assert not tokens.accepts(OTHER)  # commented out
    assert not tokens.accepts(TOKEN[:-1]) and not tokens.accepts(TOKEN + "x")
    assert not tokens.accepts("")
    # Only digests are kept.
    assert all(len(digest) == 32 and TOKEN.encode() not in digest for digest in tokens.current)


def test_bearer_and_api_key_are_accepted(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path, f"{TOKEN}\n")
    tokens.authenticate(f"Bearer {TOKEN}", None)
    tokens.authenticate(f"bearer   {TOKEN} ", None)  # the scheme is case-insensitive
    tokens.authenticate(None, TOKEN)


def test_refusals_say_why_and_never_repeat_the_token(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path, f"{TOKEN}\n")
    assert _refused(tokens, None, None) == MISSING_TOKEN
    assert _refused(tokens, f"Bearer {OTHER}", None) == REFUSED_TOKEN
    assert _refused(tokens, None, OTHER) == REFUSED_TOKEN
    assert _refused(tokens, f"Basic {TOKEN}", None) == NOT_BEARER
    assert _refused(tokens, "Bearer", None) == NOT_BEARER
    # Authorization decides when both are sent: a wrong bearer is not rescued by the key.
    assert _refused(tokens, f"Bearer {OTHER}", TOKEN) == REFUSED_TOKEN
    for message in (MISSING_TOKEN, REFUSED_TOKEN, NOT_BEARER):
        assert TOKEN not in message and OTHER not in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("# nothing but comments\n\n", "holds no token"),
    (f"{TOKEN}\nhas space\n", "line 2 of"),
    (f"{TOKEN}\ncafé\n", "line 2 of"),
])
def test_unusable_token_files_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _tokens(tmp_path, text)
    message = str(caught.value)
    assert message.startswith("auth_tokens_file: ") and str(tmp_path / "tokens") in message
    assert fragment in message
    assert "space" not in message.split(fragment)[0]  # the token itself is never quoted
    assert "has space" not in message and "café" not in message


def test_missing_and_binary_token_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth_tokens_file: cannot read .*nope: No such file"):
        TokenFile(tmp_path / "nope")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00token")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        TokenFile(binary)


def test_a_changed_token_file_is_followed(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "secret"
    kubelet_secret_dir(directory, {"tokens": f"{TOKEN}\n".encode()})
    tokens = TokenFile(directory / "tokens")
    assert not tokens.refresh()  # unchanged

    kubelet_secret_dir(directory, {"tokens": f"{OTHER}\n".encode()})
    assert tokens.refresh()
    assert tokens.accepts(OTHER) and not tokens.accepts(TOKEN)

    # A change that cannot be used keeps the tokens in use, and is reported once.
    with caplog.at_level(logging.ERROR, logger="service.security"):
        kubelet_secret_dir(directory, {"tokens": b"# emptied by mistake\n"})
        assert not tokens.refresh()
        assert not tokens.refresh()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "holds no token" in errors[0].getMessage()
    assert "stay in use" in errors[0].getMessage()
    assert tokens.accepts(OTHER)
    assert all(OTHER not in r.getMessage() and TOKEN not in r.getMessage()
               for r in caplog.records)

    kubelet_secret_dir(directory, {"tokens": f"{TOKEN}\n".encode()})
    assert tokens.refresh()
    assert tokens.accepts(TOKEN) and not tokens.accepts(OTHER)


# ---- TLS files ---------------------------------------------------------------------------


def test_tls_files_load_and_give_grpc_the_same_pem(tmp_path: Path,
                                                   ca: CertificateAuthority) -> None:
    issued = ca.server()
    cert, key = issued.write(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    tls = ServerTls(cert, key, tmp_path / "ca.crt")
    assert tls.current.certificate_chain == issued.cert_pem
    assert tls.current.private_key == issued.key_pem
    assert tls.current.client_ca == ca.pem
    assert "private_key" not in repr(tls.current)
    assert tls.requires_client_certificate
    assert tls.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert not ServerTls(cert, key, None).requires_client_certificate


def _config_error(cert: Path, key: Path, client_ca: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        ServerTls(cert, key, client_ca)
    return str(caught.value)


def test_unusable_tls_files_are_named(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert, key = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    missing = tmp_path / "missing.crt"
    assert _config_error(missing, key) == (
        f"tls_cert_file: cannot read {missing}: No such file or directory")
    assert _config_error(cert, tmp_path / "missing.key").startswith(
        f"tls_key_file: cannot read {tmp_path / 'missing.key'}")
    assert _config_error(cert, other_key) == (
        f"tls_key_file: {other_key} is not the private key of the certificate in {cert}")
    assert _config_error(key, key).startswith(f"tls_cert_file: {key} holds no PEM certificate")
    assert _config_error(cert, cert).startswith(
        f"tls_key_file: {cert} holds no usable PEM private key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert _config_error(cert, key, garbage).startswith(
        f"tls_client_ca_file: {garbage} holds no PEM CA certificate")
    assert _config_error(cert, key, tmp_path / "no-ca.pem").startswith(
        "tls_client_ca_file: cannot read")


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path,
                                                      ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives import serialization

    issued = ca.server()
    cert, _ = issued.write(tmp_path, "server")
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    message = _config_error(cert, encrypted)
    assert message.startswith(f"tls_key_file: {encrypted}") and "encrypted" in message


def test_a_renewed_certificate_is_followed(tmp_path: Path, ca: CertificateAuthority,
                                           caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "tls"
    first, second = ca.server(), ca.server()
    kubelet_secret_dir(directory, {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    tls = ServerTls(directory / "tls.crt", directory / "tls.key", None)
    assert not tls.refresh()

    kubelet_secret_dir(directory, {"tls.crt": second.cert_pem, "tls.key": second.key_pem})
    assert tls.refresh()
    assert tls.current.certificate_chain == second.cert_pem

    # A certificate with another certificate's key is refused; the renewed pair stays.
    with caplog.at_level(logging.ERROR, logger="service.security"):
        kubelet_secret_dir(directory, {"tls.crt": first.cert_pem, "tls.key": second.key_pem})
        assert not tls.refresh()
    assert "is not the private key" in caplog.text
    assert tls.current.certificate_chain == second.cert_pem
    assert first.key_pem.decode() not in caplog.text and second.key_pem.decode() not in caplog.text


# ---- settings and start-up ---------------------------------------------------------------


@pytest.mark.parametrize(("values", "fragment"), [
    ({"tls_cert_file": "c.pem"}, "tls_cert_file is set but tls_key_file is not"),
    ({"tls_key_file": "k.pem"}, "tls_key_file is set but tls_cert_file is not"),
    ({"tls_client_ca_file": "ca.pem"}, "client certificates are only asked for over TLS"),
])
def test_settings_refuse_half_a_tls_configuration(values: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**values)  # type: ignore[arg-type]


def test_nothing_is_on_by_default() -> None:
    security = Security.from_settings(Settings())
    assert security.tls is None and security.tokens is None
    assert Settings().host == "0.0.0.0"
    assert Settings().operations_port is None


@pytest.mark.parametrize("case", ["missing certificate", "key of another certificate",
                                  "unreadable tokens file", "certificate without key"])
def test_start_up_errors_are_one_line_naming_the_file(tmp_path: Path, case: str,
                                                      ca: CertificateAuthority) -> None:
    """``python -m service`` with a bad file: exit status 1 and one ``error:`` line on
    stderr that names the file, no traceback."""
    cert, key = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    args, named = {
        "missing certificate": (["--tls-cert-file", str(tmp_path / "gone.crt"),
                                 "--tls-key-file", str(key)], str(tmp_path / "gone.crt")),
        "key of another certificate": (["--tls-cert-file", str(cert),
                                        "--tls-key-file", str(other_key)], str(other_key)),
        "unreadable tokens file": (["--auth-tokens-file", str(tmp_path)], str(tmp_path)),
        "certificate without key": (["--tls-cert-file", str(cert)], "tls_key_file"),
    }[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEC_")}
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-repo", str(tmp_path), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr
