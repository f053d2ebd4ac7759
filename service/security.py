"""Transport security read from files: the server's TLS certificate, key and client CA, and
the accepted tokens.

Both follow their files. cert-manager renews a certificate and the kubelet updates a mounted
Secret in place; :meth:`Security.refresh` (called every ``secrets_poll_seconds``) picks the
new files up without a restart. A file that cannot be used at start-up is a
:class:`~service.settings.ConfigError` naming it; a later change that cannot be used is
logged once and the previous material stays in use.

No transport here: ``service/server.py`` (HTTP), ``service/grpc/server.py`` (gRPC),
``service/rest/middleware.py`` and ``service/grpc/interceptor.py`` (tokens) apply what this
module holds. Tokens are kept only as SHA-256 digests and never reach a log.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from service.errors import Unauthenticated
from service.settings import ConfigError, Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
# (inode, mtime in ns, size) of each followed file.
Stamp = tuple[tuple[int, int, int], ...]
# A file is read between two stamps; a change in between means it is read again.
READ_ATTEMPTS = 3

AUTHORIZATION = "authorization"
API_KEY = "x-api-key"
MISSING_TOKEN = ("this server requires a token: send 'Authorization: Bearer <token>' or "
                 "'x-api-key: <token>'")
REFUSED_TOKEN = "the token is not accepted"
NOT_BEARER = "the Authorization header must be 'Bearer <token>'"


class _Followed(abc.ABC, Generic[T]):
    """Material read from some files, read again when any of them changes."""

    def __init__(self, files: Sequence[tuple[str, Path]]) -> None:
        self._files = tuple(files)
        self._stamp, self.current = self._load()
        self._failed: Stamp | str | None = None

    @abc.abstractmethod
    def _read(self) -> T:
        """Read and check the files; raises :class:`ConfigError` naming the bad one."""

    def _install(self, material: T) -> None:
        """Put newly read material to use (called before it becomes ``current``)."""

    def _stamps(self) -> Stamp:
        """Inode, mtime and size of each file, through symlinks. The kubelet updates a Secret
        volume by re-pointing a symlink at a new directory: the inode changes even when the
        mtime does not."""
        stamps = []
        for setting, path in self._files:
            try:
                status = path.stat()
            except OSError as exc:
                raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
            stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    def _load(self) -> tuple[Stamp, T]:
        for _ in range(READ_ATTEMPTS):
            before = self._stamps()
            material = self._read()
            self._install(material)
            if self._stamps() == before:
                return before, material
        names = ", ".join(str(path) for _, path in self._files)
        raise ConfigError(f"{names} kept changing while being read")

    def refresh(self) -> bool:
        """Read the files again if they changed; True when new material is in use.

        A change that cannot be used (a key that does not match, a file half-written by
        hand, a file gone) is logged once and the previous material stays in use until the
        files change again.
        """
        try:
            stamp = self._stamps()
        except ConfigError as exc:
            self._report(str(exc), exc)
            return False
        if stamp in (self._stamp, self._failed):
            return False
        try:
            self._stamp, self.current = self._load()
        except ConfigError as exc:
            self._report(stamp, exc)
            return False
        self._failed = None
        logger.info("%s reloaded from %s", self._what(),
                    ", ".join(str(path) for _, path in self._files))
        return True

    def _report(self, failure: Stamp | str, exc: ConfigError) -> None:
        if failure != self._failed:
            logger.error("%s; the previous %s stay in use", exc, self._what())
        self._failed = failure

    def _what(self) -> str:
        return type(self).__name__


# ---- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsMaterial:
    """What the gRPC server is handed: PEM bytes, checked to belong together."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None


def _no_password() -> bytes:
    raise ConfigError("the private key is encrypted; give it unencrypted (as cert-manager "
                      "writes it), readable only by the server's user")


def _read_bytes(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # uvicorn speaks HTTP/1.1 only.
    context.set_alpn_protocols(["http/1.1"])
    return context


class ServerTls(_Followed[TlsMaterial]):
    """The server's certificate chain and key, and the client CA for mutual TLS.

    ``ssl_context`` is the one context the HTTP server uses for its whole life: a new
    certificate is loaded into it (``load_cert_chain`` again), so new handshakes present it
    while open connections keep theirs. A new client CA is *added* to it: Python cannot
    remove a CA from a context, so on HTTP a CA taken out of the file stays trusted until
    the server restarts (gRPC gets the whole new set; docs/security.md).
    ``current`` is the material for gRPC's certificate fetcher.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.ssl_context = _server_context()
        if client_ca_file is not None:
            self.ssl_context.verify_mode = ssl.CERT_REQUIRED
        files = [("tls_cert_file", cert_file), ("tls_key_file", key_file)]
        if client_ca_file is not None:
            files.append(("tls_client_ca_file", client_ca_file))
        super().__init__(files)

    @property
    def requires_client_certificate(self) -> bool:
        return self.client_ca_file is not None

    def _read(self) -> TlsMaterial:
        # Checked on a scratch context first, so that files which do not fit together never
        # reach the live one.
        scratch = _server_context()
        try:
            scratch.load_verify_locations(cafile=self.cert_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls_cert_file: {self.cert_file} holds no PEM certificate "
                              f"({exc.reason or exc})") from None
        except OSError as exc:
            raise ConfigError(f"tls_cert_file: cannot read {self.cert_file}: "
                              f"{exc.strerror}") from None
        self._load_chain(scratch)
        client_ca = None
        if self.client_ca_file is not None:
            client_ca = _read_bytes("tls_client_ca_file", self.client_ca_file)
            try:
                scratch.load_verify_locations(cadata=client_ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError) as exc:
                raise ConfigError(f"tls_client_ca_file: {self.client_ca_file} holds no PEM "
                                  f"CA certificate ({getattr(exc, 'reason', None) or exc})"
                                  ) from None
        chain = _read_bytes("tls_cert_file", self.cert_file)
        key = _read_bytes("tls_key_file", self.key_file)
        return TlsMaterial(chain, key, client_ca)

    def _load_chain(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert_file, self.key_file, password=_no_password)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(f"tls_key_file: {self.key_file} is not the private key of "
                                  f"the certificate in {self.cert_file}") from None
            raise ConfigError(f"tls_key_file: {self.key_file} holds no usable PEM private "
                              f"key ({exc.reason or exc})") from None
        except ConfigError as exc:
            raise ConfigError(f"tls_key_file: {self.key_file}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"tls_key_file: cannot read {self.key_file}: "
                              f"{exc.strerror}") from None

    def _install(self, material: TlsMaterial) -> None:
        self._load_chain(self.ssl_context)
        if material.client_ca is not None:
            self.ssl_context.load_verify_locations(cadata=material.client_ca.decode("ascii"))

    def _what(self) -> str:
        return "TLS certificate and key" + (" and client CA" if self.client_ca_file else "")


# ---- tokens ------------------------------------------------------------------------------


def _digest(token: str | bytes) -> bytes:
    data = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(data).digest()


class TokenFile(_Followed[tuple[bytes, ...]]):
    """The accepted tokens: one per line, blank lines and ``#`` comments ignored.

    Kept as SHA-256 digests and compared with :func:`hmac.compare_digest` against every one
    of them, so neither the time taken nor its length says which token, or how much of one,
    matched.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__([("auth_tokens_file", path)])

    def _read(self) -> tuple[bytes, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"auth_tokens_file: cannot read {self.path}: "
                              f"{exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"auth_tokens_file: {self.path} is not UTF-8 text") from None
        digests = []
        for number, line in enumerate(text.splitlines(), start=1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            # Tokens travel in HTTP headers and gRPC metadata: visible ASCII only. The line
            # number, never the token, goes into the message.
            if not all("!" <= char <= "~" for char in token):
                raise ConfigError(f"auth_tokens_file: line {number} of {self.path} holds a "
                                  "space or a character outside visible ASCII")
            digests.append(_digest(token))
        if not digests:
            raise ConfigError(f"auth_tokens_file: {self.path} holds no token (one per line)")
        return tuple(digests)

    def accepts(self, token: str) -> bool:
        """Whether ``token`` is one of the accepted tokens (constant time)."""
        candidate = _digest(token)
        found = False
        for accepted in self.current:
            found |= hmac.compare_digest(candidate, accepted)
        return found

    def authenticate(self, authorization: str | None, api_key: str | None) -> None:
        """Raise :class:`Unauthenticated` unless the caller's ``Authorization: Bearer`` value
        (preferred when both are sent) or ``x-api-key`` value is an accepted token."""
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(NOT_BEARER)
        elif api_key is not None:
            token = api_key
        else:
            raise Unauthenticated(MISSING_TOKEN)
        if not self.accepts(token.strip()):
            raise Unauthenticated(REFUSED_TOKEN)

    def _what(self) -> str:
        return "accepted tokens"


# ---- both --------------------------------------------------------------------------------


@dataclass
class Security:
    """What the settings ask for: TLS (``None``: plaintext) and tokens (``None``: open)."""

    tls: ServerTls | None
    tokens: TokenFile | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        """Load every file the settings name; :class:`ConfigError` names the first bad one."""
        tls = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            tls = ServerTls(settings.tls_cert_file, settings.tls_key_file,
                            settings.tls_client_ca_file)
        tokens = None
        if settings.auth_tokens_file is not None:
            tokens = TokenFile(settings.auth_tokens_file)
        return cls(tls, tokens)

    def refresh(self) -> None:
        """Pick up changed files (see :meth:`_Followed.refresh`). Runs on the event loop:
        the HTTP server's SSL context must not change while the loop uses it."""
        for followed in (self.tls, self.tokens):
            if followed is not None:
                followed.refresh()

    async def follow(self, period: float) -> None:
        """Refresh every ``period`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(period)
            try:
                self.refresh()
            except Exception:  # a failed check must not end the following
                logger.exception("checking the TLS and token files failed")
