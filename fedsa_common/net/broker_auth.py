"""How a client authenticates to the broker: TLS and username/password, and where they come from.

Why this is separate from the session: the same three sources of connection settings (the
broker URL, a credentials file written by ``hub provision``, and explicit CLI options) apply
to devices, hubs and the status tools, and the rules for combining them must be the same
everywhere. ``MqttSession`` only asks this module for the resolved endpoint and TLS context.

URLs: ``mqtt://[user[:password]@]host[:port]`` (plain TCP, default port 1883) and
``mqtts://...`` (TLS, default port 8883). A password in a URL works but shows up in process
listings; prefer a credentials file or a password file. Passwords are never logged:
``redact_url`` replaces them before a URL reaches a message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsa_common.wire.names import NAME_RE

if TYPE_CHECKING:  # the secagg package pulls in torch, which join's early checks avoid
    from fedsa_common.privacy.secagg.identity import DeviceIdentity

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CREDENTIALS_FORMAT = "fedsa-broker-credentials/1"
Role = Literal["device", "regional", "cloud", "monitor", "bridge"]


@dataclass(frozen=True)
class BrokerAuth:
    """Credentials and trust anchors for one client; every field is optional.

    ``ca_file``/``ca_pem`` name the CA that signed the broker's certificate (both may be given;
    neither means the system trust store). They only matter for ``mqtts://`` URLs.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    ca_pem: str | None = field(default=None, repr=False)

    @property
    def has_ca(self) -> bool:
        return self.ca_file is not None or self.ca_pem is not None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, after merging the URL with a ``BrokerAuth``."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_url(url: str) -> Endpoint:
    """``Endpoint`` from an ``mqtt://`` or ``mqtts://`` URL; ``ValueError`` naming what is wrong.

    Only scheme, optional user info, host and port are allowed: a path, query or fragment is
    more likely a typo than something we should silently ignore.
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss"):
        raise ValueError(f"MQTT over WebSockets is not supported; use the broker's MQTT "
                         f"listener, mqtt://host:port or mqtts://host:port, got {shown!r}")
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL must look like mqtt://host:port or mqtts://host:port, "
                         f"got {shown!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL must be just {parts.scheme}://host:port, got {shown!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in broker URL {shown!r}") from exc
    if not parts.hostname:
        raise ValueError(f"broker URL has no host: {shown!r}")
    if port == 0:
        raise ValueError(f"port 0 in broker URL {shown!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username == "":
        raise ValueError(f"empty user name in broker URL {shown!r}")
    return Endpoint(
        host=parts.hostname,
        port=DEFAULT_PORTS[parts.scheme] if port is None else port,
        tls=parts.scheme == "mqtts",
        username=username,
        password=password,
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def resolve_endpoint(url: str, auth: BrokerAuth | None) -> Endpoint:
    """Merge the URL with ``auth``: a field given in both places must agree.

    A CA with a plain ``mqtt://`` URL is refused rather than ignored, since it means the
    operator expected TLS and would otherwise send the password in clear text.
    """
    endpoint = parse_url(url)
    if auth is None:
        return endpoint
    if auth.has_ca and not endpoint.tls:
        raise ValueError(f"a TLS CA was given but {redact_url(url)!r} is not an mqtts:// URL")
    username = _agree("user name", endpoint.username, auth.username, url)
    password = _agree("password", endpoint.password, auth.password, url)
    if password is not None and username is None:
        raise ValueError("a password needs a user name")
    return Endpoint(endpoint.host, endpoint.port, endpoint.tls, username, password)


def warn_plain_password(endpoint: Endpoint, url: str) -> None:
    """Log a warning when a password is about to travel over plain ``mqtt://``: the broker
    (and anyone on the path) reads it, and with it the account's publishing rights.  A
    warning, not an error, because a local test broker on 127.0.0.1 is a legitimate use."""
    if endpoint.password is not None and not endpoint.tls:
        log.warning("the password for %r goes to %s in clear text (plain mqtt://); use "
                    "mqtts:// with a CA (hub provision writes both)", endpoint.username,
                    redact_url(url))


def _agree(what: str, from_url: str | None, given: str | None, url: str) -> str | None:
    if from_url is not None and given is not None and from_url != given:
        raise ValueError(f"the {what} in {redact_url(url)!r} differs from the one given "
                         "separately; give it once")
    return given if given is not None else from_url


def tls_context(auth: BrokerAuth | None) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name.

    ``ssl.create_default_context`` gives certificate and host-name checks and TLS >= 1.2;
    with no CA given it trusts the system store (a broker with a public certificate).
    """
    ca_file = str(auth.ca_file) if auth is not None and auth.ca_file is not None else None
    ca_pem = auth.ca_pem if auth is not None else None
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file,
                                          cadata=ca_pem)
    except (OSError, ssl.SSLError) as err:
        where = ca_file or "the credentials' ca_pem"
        raise ValueError(f"cannot load the TLS CA from {where}: {err}") from err


class SecAggIdentityFields(BaseModel):
    """A device's secure-aggregation signing identity as ``hub provision`` writes it
    (base64 of raw bytes; see ``fedsa_common.privacy.secagg.identity``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    signing_key: str = Field(min_length=1, repr=False)  # Ed25519 private key, 32 bytes
    certificate: str = Field(min_length=1)  # the authority's signature over key and id
    authority: str = Field(min_length=1)  # the authority's Ed25519 public key


class Credentials(BaseModel):
    """One account's credentials file as written by ``hub provision``.

    The CA certificate is embedded so that a device needs exactly one file. ``region`` and
    ``client`` say which identity the account was provisioned for, so a CLI can refuse to run
    a device under another device's credentials (the broker would silently drop its updates).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["fedsa-broker-credentials/1"] = CREDENTIALS_FORMAT
    federation: str = Field(pattern=NAME_RE)
    role: Role
    username: str = Field(min_length=1)
    password: str = Field(min_length=1, repr=False)
    broker: str
    ca_pem: str | None = Field(None, repr=False)
    region: str | None = Field(None, pattern=NAME_RE)
    client: str | None = Field(None, pattern=NAME_RE)
    secagg: SecAggIdentityFields | None = Field(None, repr=False)  # devices only
    # regional hubs: the secure-aggregation authority's public key (base64), with which the
    # hub leaves a device whose certificate does not verify out of its region's roster
    secagg_authority: str | None = Field(None, min_length=1)

    def auth(self) -> BrokerAuth:
        return BrokerAuth(username=self.username, password=self.password, ca_pem=self.ca_pem)

    def secagg_identity(self) -> DeviceIdentity | None:
        """The device's signing identity, checked; None when the file has none.
        ``ValueError`` naming the field when it is malformed or not this device's."""
        s = self.secagg
        if s is None:
            return None
        if self.role != "device" or self.region is None or self.client is None:
            raise ValueError(f"credentials of {self.username}: a secagg identity belongs to a "
                             "device account")
        try:
            raw = [base64.b64decode(v, validate=True)
                   for v in (s.signing_key, s.certificate, s.authority)]
        except binascii.Error:
            raise ValueError(f"credentials of {self.username}: secagg fields must be "
                             "base64") from None
        from fedsa_common.privacy.secagg.identity import DeviceIdentity

        return DeviceIdentity.load(self.federation, self.region, self.client, *raw)

    def secagg_authority_key(self) -> bytes | None:
        """The authority's public key a regional hub checks certificates with (None when
        the file has none); ``ValueError`` naming the field when it is malformed."""
        if self.secagg_authority is None:
            return None
        return authority_public_key(self.secagg_authority,
                                    f"credentials of {self.username}: secagg_authority")


# an Ed25519 public key (fedsa_common.privacy.secagg.identity.PUBLIC_BYTES)
AUTHORITY_KEY_BYTES = 32


def authority_public_key(text: str, what: str) -> bytes:
    """The secure-aggregation authority's Ed25519 public key from its base64 text, as
    ``hub provision`` writes it (``secagg-authority.pub``, a regional hub's credentials);
    ``ValueError`` naming ``what``."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError(f"{what}: not base64") from None
    if len(raw) != AUTHORITY_KEY_BYTES:
        raise ValueError(f"{what}: an Ed25519 public key is {AUTHORITY_KEY_BYTES} bytes, "
                         f"not {len(raw)}")
    return raw


def read_authority_file(path: Path) -> bytes:
    """The authority's public key from a file (``secagg-authority.pub``); ``ValueError``
    naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read secagg authority file {path}: {err.strerror}") from None
    return authority_public_key(text, f"secagg authority file {path}")


def load_credentials(path: Path) -> Credentials:
    """Read a credentials file; ``ValueError`` naming the file and the bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read credentials file {path}: {err.strerror}") from None
    try:
        creds = Credentials.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise ValueError(f"credentials file {path}: {loc}: {first['msg']}") from None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("credentials file %s is readable by other users; chmod 600 it", path)
    return creds


def read_password_file(path: Path) -> str:
    """The first line of ``path`` (so a trailing newline from ``echo`` does not count)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read password file {path}: {err.strerror}") from None
    if not lines or not lines[0]:
        raise ValueError(f"password file {path} is empty")
    return lines[0]


@dataclass(frozen=True)
class Connection:
    """What a CLI resolved: the URL to use, the auth (None: anonymous, no TLS options) and the
    credentials file's identity, if one was given."""

    url: str | None
    auth: BrokerAuth | None
    credentials: Credentials | None = None


def resolve_connection(
    broker: str | None,
    *,
    credentials: Path | None = None,
    username: str | None = None,
    password_file: Path | None = None,
    tls_ca: Path | None = None,
    default_url: str | None = None,
) -> Connection:
    """Combine ``--broker``, ``--credentials``, ``--username``, ``--password-file``, ``--tls-ca``.

    Explicit options win over the credentials file; the URL is ``--broker``, else the file's
    ``broker``, else ``default_url``. Raises ``ValueError`` naming the option at fault.
    """
    creds = load_credentials(credentials) if credentials is not None else None
    url = broker or (creds.broker if creds is not None else None) or default_url
    base = creds.auth() if creds is not None else BrokerAuth()
    auth = BrokerAuth(
        username=username if username is not None else base.username,
        password=read_password_file(password_file) if password_file is not None
        else base.password,
        ca_file=tls_ca if tls_ca is not None else base.ca_file,
        ca_pem=None if tls_ca is not None else base.ca_pem,
    )
    if auth == BrokerAuth():
        if url is not None:
            parse_url(url)  # a malformed URL fails here, not in the network thread later
        return Connection(url, None, creds)
    if url is None:
        raise ValueError("--broker is required with --username/--password-file/--tls-ca")
    resolve_endpoint(url, auth)  # fail now, naming the problem, rather than in a thread later
    return Connection(url, auth, creds)


def check_identity(
    creds: Credentials | None,
    *,
    federation: str,
    role: Role | tuple[Role, ...],
    region: str | None = None,
    client: str | None = None,
) -> None:
    """Refuse to run as an identity the credentials were not provisioned for.

    The broker would accept the connection and then drop every publish outside the account's
    topics, so the mistake would otherwise show up only as a device whose updates never arrive.
    """
    if creds is None:
        return
    roles = (role,) if isinstance(role, str) else role
    wanted = {"federation": federation, "role": None, "region": region, "client": client}
    if creds.role not in roles:
        raise ValueError(f"credentials are for a {creds.role} account, not {' or '.join(roles)}")
    for key, value in wanted.items():
        have = getattr(creds, key)
        if value is not None and have != value:
            raise ValueError(f"credentials are for {key} {have!r}, not {value!r}")


def credentials_auth(path: Path, *, federation: str, role: Role, region: str | None = None,
                     client: str | None = None) -> BrokerAuth:
    """Load a credentials file for a process that is not started from a CLI (scenario
    workers), with the same identity check as the CLIs."""
    creds = load_credentials(path)
    check_identity(creds, federation=federation, role=role, region=region, client=client)
    return creds.auth()
