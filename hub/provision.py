"""``hub provision``: everything a Mosquitto broker needs to serve one federation securely.

Writes, into one output directory::

    mosquitto.conf         TLS listener, no anonymous access, password file, ACL
    ca.crt                 the private CA devices and hubs trust (public)
    ca.key        (0600)   keep offline; only needed to re-run provision
    server.crt, server.key (0600)   the broker's certificate for the given host names/IPs
    passwd        (0600)   Mosquitto password file (PBKDF2-SHA512, as mosquitto_passwd writes)
    acl                    one user block per account (hub.provision_acl)
    credentials/  (0700)   one <user>.json (0600) per account: user, password, broker URL, CA;
                           a device's also holds its secure-aggregation signing identity
    secagg-authority.key (0600)  Ed25519 key certifying devices' signing keys; keep offline
                           (whoever holds it can impersonate devices to secure aggregation)
    secagg-authority.pub   its public key (base64); also in each regional hub's credentials,
                           so the hub leaves a device whose certificate does not verify out
                           of its region's secure-aggregation roster
    data/                  Mosquitto persistence (retained announcement, device sessions)
    systemd/               units for this broker, its hubs and its devices (hub.provision_units)
    provision.json         what was provisioned (no secrets), to check re-runs

With ``sites`` (one Mosquitto per region, bridged to the cloud broker) the directory above is
the cloud broker's, whose accounts are the cloud hub, the monitor and one bridge account per
region, and each region gets ``sites/REGION/`` with the same files for its own broker (no
``ca.key``: copy the directory to the region's gateway), a bridge to the cloud broker in its
``mosquitto.conf`` (0600: it holds the bridge's password; hub.provision_bridge says what
crosses the link), and the credentials of its monitor, regional hub and devices.

Re-running on the same directory keeps the CA and every existing account's password, so
adding a device does not invalidate the others; accounts no longer listed lose their
credentials file and their broker access. ``rotate=True`` issues new passwords to everyone.
Devices keep their signing identity across re-runs too (new ones on ``rotate``); a device
added later is certified by the same authority, so the others need no new file.
"""

from __future__ import annotations

import base64
import csv
import getpass
import hashlib
import json
import os
import pwd
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fedsa_common.config.shards import intake_shards_problems
from fedsa_common.net.broker import mosquitto_path
from fedsa_common.net.broker_auth import (
    CREDENTIALS_FORMAT,
    Credentials,
    SecAggIdentityFields,
    load_credentials,
)
from fedsa_common.privacy.secagg.identity import Authority, DeviceIdentity
from fedsa_common.process.atomic import write_bytes
from fedsa_common.wire.protocol import check_name
from hub.provision_acl import Account, federation_accounts, render_acl, site_accounts
from hub.provision_bridge import BridgeLogin, BridgeTLS, bridge_user, render_bridge
from hub.provision_tls import CertKey, check_ca_pair, issue_server_cert, new_ca
from hub.provision_units import Programs, units_for

# mosquitto_passwd's defaults: 12-byte salt, 101 PBKDF2 iterations. The passwords we issue are
# 192 random bits, so offline guessing is hopeless whatever the iteration count.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
MANIFEST = "provision.json"
AUTHORITY_KEY = "secagg-authority.key"
AUTHORITY_PUB = "secagg-authority.pub"


@dataclass(frozen=True)
class Site:
    """A region's own broker: the names devices reach it by (all in its certificate, the
    first in their credentials) and its TLS port."""

    hosts: list[str]
    port: int = 8883

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("a site needs at least one host name")
        if not 0 < self.port < 65536:
            raise ValueError(f"site port {self.port} out of range")

    @property
    def url(self) -> str:
        return _mqtts_url(self.hosts[0], self.port)


@dataclass(frozen=True)
class ProvisionSpec:
    """What to provision. ``regions`` maps each region to its device ids (may be empty);
    ``sites``, when given, maps every region to its own broker (bridged to the cloud's)."""

    federation: str
    regions: dict[str, list[str]]
    hosts: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    port: int = 8883
    bind: str | None = None  # listen address; None: all interfaces
    broker_user: str | None = None  # Mosquitto's `user` (the account it drops root to)
    max_packet_bytes: int = 4_000_000
    sites: dict[str, Site] = field(default_factory=dict)
    programs: Programs | None = None  # for the systemd units; None: found on this machine
    # region -> intake processes (the federation configuration's intake_shards): a regional
    # unit runs ``--intake-shards K`` for a region with K > 1
    intake_shards: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("federation", self.federation)
        if not self.regions:
            raise ValueError("no regions: give at least one --region or --devices file")
        if not self.hosts:
            raise ValueError("no host names: give at least one --host")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.max_packet_bytes < 1024:
            raise ValueError("max_packet_bytes must be at least 1024")
        if self.sites:
            missing = sorted(set(self.regions) - set(self.sites))
            unknown = sorted(set(self.sites) - set(self.regions))
            if missing:
                raise ValueError(f"--site: no site for region(s) {', '.join(missing)}; with "
                                 "sites, every region needs one")
            if unknown:
                raise ValueError(f"--site: {', '.join(unknown)} is not a region")
        unknown = sorted(set(self.intake_shards) - set(self.regions))
        if unknown:
            raise ValueError(f"intake_shards: {', '.join(unknown)} is not a provisioned region "
                             "(give it with --region, or remove it from the configuration)")
        problems = intake_shards_problems(self.intake_shards)
        if problems:
            raise ValueError(problems[0])

    @property
    def broker_url(self) -> str:
        """The cloud broker (the only broker without sites)."""
        return _mqtts_url(self.hosts[0], self.port)


def _mqtts_url(host: str, port: int) -> str:
    return f"mqtts://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass
class ProvisionResult:
    """What a run wrote. ``accounts`` are the cloud broker's; ``sites`` each site's. Names in
    ``added``/``kept``/``removed`` are ``REGION/USER`` for a site's accounts."""

    out: Path
    accounts: list[Account]
    sites: dict[str, list[Account]] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def credentials_path(self, username: str, site: str | None = None) -> Path:
        return credentials_path(self.out if site is None else site_dir(self.out, site),
                                username)


# ------------------------------------------------------------------------ input parsing


def parse_site_options(values: list[str], ports: list[str], default_port: int
                       ) -> dict[str, Site]:
    """``["north=gw-n.example,10.0.0.5"]`` and ``["north=8884"]`` -> ``{"north":
    Site(["gw-n.example", "10.0.0.5"], 8884)}`` (ports default to ``default_port``)."""
    hosts: dict[str, list[str]] = {}
    for value in values:
        region, _, names = value.partition("=")
        listed = [h.strip() for h in names.split(",") if h.strip()]
        if not region.strip() or not listed:
            raise ValueError(f"--site {value!r}: expected REGION=HOST[,HOST...]")
        hosts.setdefault(region.strip(), []).extend(listed)
    port_of: dict[str, int] = {}
    for value in ports:
        region, _, port = value.partition("=")
        if region.strip() not in hosts or not port.strip().isdigit():
            raise ValueError(f"--site-port {value!r}: expected REGION=PORT for a --site region")
        port_of[region.strip()] = int(port)
    return {r: Site(h, port_of.get(r, default_port)) for r, h in hosts.items()}


def parse_region_options(values: list[str]) -> dict[str, list[str]]:
    """``["north=dev-0,dev-1", "south"]`` -> ``{"north": ["dev-0", "dev-1"], "south": []}``.
    An empty name in a list (``north=dev-0,,dev-1``) is refused rather than skipped: it is
    a typo, and the device it stood for would get no credentials."""
    regions: dict[str, list[str]] = {}
    for value in values:
        region, _, clients = value.partition("=")
        region = region.strip()
        if not region:
            raise ValueError(f"--region {value!r}: expected REGION=DEV,DEV,...")
        names = [c.strip() for c in clients.split(",")] if clients.strip() else []
        if "" in names:
            raise ValueError(f"--region {value!r}: an empty device name in the list")
        regions.setdefault(region, []).extend(names)
    return regions


def read_devices_csv(path: Path) -> dict[str, list[str]]:
    """Rows of ``client,region`` (an optional header row with those names; blank lines and
    ``#`` comments skipped); ``ValueError`` naming the line of a malformed row."""
    regions: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if [c.lower() for c in cells] == ["client", "region"]:
                continue
            if len(cells) != 2 or not all(cells):
                raise ValueError(f"{path}:{lineno}: expected 'client,region', got {row!r}")
            regions.setdefault(cells[1], []).append(cells[0])
    return regions


def merge_regions(*maps: dict[str, list[str]]) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for m in maps:
        for region, clients in m.items():
            merged.setdefault(region, []).extend(clients)
    return merged


# ------------------------------------------------------------------- file contents (pure)


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None,
                            iterations: int = PBKDF2_ITERATIONS) -> str:
    """One line of a Mosquitto 2 password file: ``user:$7$iterations$salt$hash`` with
    PBKDF2-HMAC-SHA512 over the raw salt, both base64 (what ``mosquitto_passwd`` writes)."""
    if ":" in username or "\n" in username or "\n" in password:
        raise ValueError(f"user name {username!r} or its password cannot go in a password file")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


# QoS 1 messages Mosquitto queues for one offline persistent session, per device of the
# largest region: a regional hub that restarts mid-round gets each device's update frames
# (one for a compressed update, a few for a dense one) from its session's queue; 8 leaves room
# for resends and a round of async updates. Mosquitto's default (1,000) drops the rest, which
# devices then resend, one backoff later.
# The cloud hub subscribes to every device's retained presence: when it connects (or
# reconnects) after the devices, the broker hands it one per device of the whole federation
# at once, past its in-flight window into its queue, plus the hubs' retained statuses; a
# queue shorter than that drops the rest (at 10 regions of 1,000 devices, 8 per device of a
# region held 8,000: the regional hubs' statuses were dropped and round 1 never started).
QUEUED_PER_DEVICE = 8
MIN_QUEUED_MESSAGES = 1000
QUEUED_RETAINED_MARGIN = 100  # hub statuses and the other retained messages per federation
# Seconds between Mosquitto writes of its persistence file (default 1800): what was queued
# since the last write is lost if the broker machine crashes.
AUTOSAVE_INTERVAL_S = 60


def queued_messages_for(spec: ProvisionSpec) -> int:
    """``max_queued_messages`` for the federation: sized by its largest region and by its
    devices in all."""
    return queued_messages(max(len(devices) for devices in spec.regions.values()),
                           sum(len(devices) for devices in spec.regions.values()))


def queued_messages(largest_region: int, devices: int) -> int:
    """``max_queued_messages`` for a federation of ``devices`` whose largest region has
    ``largest_region``: a regional hub's updates of a round, and the cloud's retained
    presences of every device (see above)."""
    return max(MIN_QUEUED_MESSAGES, QUEUED_PER_DEVICE * largest_region,
               devices + QUEUED_RETAINED_MARGIN)


def render_mosquitto_conf(spec: ProvisionSpec, out: Path, *, port: int | None = None,
                          bridge: str = "") -> str:
    """``mosquitto.conf`` for the directory ``out`` (absolute paths: Mosquitto resolves
    relative ones against its working directory); a site's listens on its own ``port`` and
    ends with its ``bridge`` block."""
    out = out.resolve()
    port = spec.port if port is None else port
    listener = f"listener {port}" + (f" {spec.bind}" if spec.bind else "")
    lines = [
        f"# Mosquitto for fedsa-edge federation {spec.federation!r}, written by `hub provision`.",
        "# Regenerate rather than edit: re-running provision rewrites this file.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"max_queued_messages {queued_messages_for(spec)}",
        f"max_packet_size {spec.max_packet_bytes}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if spec.broker_user:
        lines.append(f"user {spec.broker_user}")
    lines += [
        "",
        listener,
        "protocol mqtt",
        f"cafile {out / 'ca.crt'}",
        f"certfile {out / 'server.crt'}",
        f"keyfile {out / 'server.key'}",
        "tls_version tlsv1.2",
        "require_certificate false",
        "",
    ]
    return "\n".join(lines) + (f"\n{bridge}" if bridge else "")


def credentials_path(out: Path, username: str) -> Path:
    return out / "credentials" / f"{username}.json"


def site_dir(out: Path, region: str) -> Path:
    """Where region ``region``'s broker files go (copied as a whole to its gateway)."""
    return out / "sites" / region


@dataclass(frozen=True)
class BrokerDir:
    """One broker's directory: where it is, who logs in to it, how they reach it."""

    path: Path
    accounts: list[Account]
    hosts: list[str]
    url: str
    port: int
    label: str = ""  # prefix of account names in the result ("north/" for a site)


# ------------------------------------------------------------------------------- writing


def provision(spec: ProvisionSpec, out: Path, *, rotate: bool = False) -> ProvisionResult:
    """Write (or refresh) the broker files and per-account credentials in ``out`` (and, with
    sites, in ``out/sites/REGION``)."""
    out = Path(out)
    if spec.sites:
        accounts, by_site = site_accounts(spec.regions)
    else:
        accounts, by_site = federation_accounts(spec.regions), {}
    owner = _broker_owner(spec.broker_user)
    previous = _previous_manifest(out, spec.federation)
    out.mkdir(parents=True, exist_ok=True)
    result = ProvisionResult(out, accounts, by_site)
    if previous is not None:
        if previous.get("broker") != spec.broker_url:
            result.notes.append(f"the broker URL changed from {previous.get('broker')} to "
                                f"{spec.broker_url}: every account needs its new file")
        result.notes.append("a running Mosquitto reloads passwd and acl on SIGHUP; restart it "
                            "to serve the new server certificate")
        gone = sorted(set(previous.get("sites") or {}) - set(spec.sites))
        if gone:
            result.notes.append(f"no longer provisioned: {', '.join(gone)}; remove "
                                f"{out / 'sites'}/{{{','.join(gone)}}} when their brokers stop")

    ca = _load_or_create_ca(out, spec.federation, result)
    authority = _load_or_create_authority(out)
    programs = spec.programs or default_programs()
    cloud = BrokerDir(out, accounts, spec.hosts, spec.broker_url, spec.port)
    passwords = _write_broker_dir(spec, cloud, ca, authority, owner, rotate, result)
    _write_units(out, units_for(programs, spec.federation, out, cloud=True,
                                regions=[] if spec.sites else list(spec.regions),
                                intake_shards=spec.intake_shards))
    for region, site_accts in by_site.items():
        site = spec.sites[region]
        where = BrokerDir(site_dir(out, region), site_accts, site.hosts, site.url, site.port,
                          label=f"{region}/")
        login = BridgeLogin(bridge_user(region), passwords[bridge_user(region)])
        bridge = render_bridge(
            spec.federation, region, _bridge_address(spec), login=login,
            tls=BridgeTLS(str(where.path.resolve() / "ca.crt")),
            max_packet_bytes=spec.max_packet_bytes)
        _write_broker_dir(spec, where, ca, authority, owner, rotate, result, bridge=bridge)
        _write_units(where.path, units_for(programs, spec.federation, where.path, cloud=False,
                                           regions=[region], intake_shards=spec.intake_shards))
    _write(out / MANIFEST, (json.dumps(_manifest(spec, accounts), indent=2) + "\n").encode(),
           0o644)
    return result


def default_programs() -> Programs:
    """The ``hub``, ``edge-client`` and ``mosquitto`` of this machine (the environment
    ``hub provision`` runs in), as absolute paths for the units."""
    here = Path(sys.executable).parent

    def find(name: str) -> str:
        return shutil.which(name) or str(here / name)

    return Programs(hub=find("hub"), edge_client=find("edge-client"),
                    mosquitto=mosquitto_path() or "/usr/sbin/mosquitto")


def _write_units(broker_dir: Path, units: dict[str, str]) -> None:
    """``broker_dir/systemd/``: exactly ``units`` (a region no longer served loses its)."""
    target = broker_dir / "systemd"
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.service"):
        if stale.name not in units:
            stale.unlink()
    for name, text in units.items():
        _write(target / name, text.encode(), 0o644)


def _bridge_address(spec: ProvisionSpec) -> str:
    """``HOST:PORT`` of the cloud broker for a bridge (the host its certificate names)."""
    return f"{spec.hosts[0]}:{spec.port}"


def _write_broker_dir(spec: ProvisionSpec, broker: BrokerDir, ca: CertKey,
                      authority: Authority, owner: tuple[int, int] | None, rotate: bool,
                      result: ProvisionResult, *, bridge: str = "") -> dict[str, str]:
    """One broker's certificate, credentials, password file, ACL and configuration; returns
    every account's password.  A configuration with a bridge holds the bridge's password,
    so it is as private as the password file."""
    out = broker.path
    out.mkdir(parents=True, exist_ok=True)
    server = issue_server_cert(ca, broker.hosts)
    ca_pem = ca.cert_pem.decode()
    passwords = {a.username: _password_for(out, a, spec.federation, rotate, result,
                                           broker.label)
                 for a in broker.accounts}
    identities = {a.username: _identity_for(out, a, spec.federation, authority, rotate)
                  for a in broker.accounts if a.role == "device"}
    authority_b64 = base64.b64encode(authority.public).decode()
    (out / "credentials").mkdir(mode=0o700, exist_ok=True)
    os.chmod(out / "credentials", 0o700)
    for account in broker.accounts:
        creds = Credentials(format=CREDENTIALS_FORMAT, federation=spec.federation,
                            role=account.role, username=account.username,
                            password=passwords[account.username], broker=broker.url,
                            ca_pem=ca_pem, region=account.region, client=account.client,
                            secagg=identities.get(account.username),
                            secagg_authority=authority_b64 if account.role == "regional"
                            else None)
        _write(credentials_path(out, account.username),
               (creds.model_dump_json(indent=2) + "\n").encode(), 0o600)
    wanted = {credentials_path(out, a.username).name for a in broker.accounts}
    for stale in sorted((out / "credentials").glob("*.json")):
        if stale.name not in wanted:
            stale.unlink()
            result.removed.append(broker.label + stale.stem)

    passwd = "".join(mosquitto_password_line(a.username, passwords[a.username]) + "\n"
                     for a in broker.accounts)
    conf = render_mosquitto_conf(spec, out, port=broker.port, bridge=bridge)
    _write(out / "ca.crt", ca.cert_pem, 0o644)
    _write(out / AUTHORITY_PUB, (authority_b64 + "\n").encode(), 0o644)
    _write(out / "server.crt", server.cert_pem, 0o644)
    _write(out / "server.key", server.key_pem, 0o600)
    _write(out / "passwd", passwd.encode(), 0o600)
    _write(out / "acl", render_acl(spec.federation, broker.accounts).encode(), 0o644)
    _write(out / "mosquitto.conf", conf.encode(), 0o600 if bridge else 0o644)
    (out / "data").mkdir(mode=0o700, exist_ok=True)
    private = [out / "server.key", out / "passwd", out / "data"]
    _hand_to_broker_user(spec.broker_user, owner,
                         private + ([out / "mosquitto.conf"] if bridge else []), result)
    return passwords


def _previous_manifest(out: Path, federation: str) -> dict | None:
    """The manifest of an earlier run into ``out``, after checking it is the same federation."""
    path = out / MANIFEST
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("federation") != federation:
            raise ValueError(f"{out} holds federation {previous.get('federation')!r}, not "
                             f"{federation!r}; use another --out directory")
        return previous
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and was not written by `hub provision`")
    return None


def _load_or_create_ca(out: Path, federation: str, result: ProvisionResult) -> CertKey:
    cert, key = out / "ca.crt", out / "ca.key"
    if cert.exists() and key.exists():
        ca = CertKey(cert.read_bytes(), key.read_bytes())
        check_ca_pair(ca)
        result.notes.append("kept the existing CA (devices keep trusting the broker)")
        return ca
    if cert.exists() or key.exists():
        raise ValueError(f"{out} has only one of ca.crt and ca.key; restore the other or "
                         "remove both to create a new CA (every account then needs new files)")
    ca = new_ca(federation)
    _write(key, ca.key_pem, 0o600)
    return ca


def _load_or_create_authority(out: Path) -> Authority:
    """The secure-aggregation authority of this directory (created on the first run)."""
    path = out / AUTHORITY_KEY
    if path.exists():
        try:
            return Authority.from_private_bytes(base64.b64decode(path.read_text().strip(),
                                                                 validate=True))
        except ValueError:
            raise ValueError(f"{path} is not a base64 Ed25519 key; restore it or remove it "
                             "(every device then needs its new credentials file)") from None
    authority = Authority.generate()
    _write(path, base64.b64encode(authority.private_bytes) + b"\n", 0o600)
    return authority


def _identity_for(out: Path, account: Account, federation: str, authority: Authority,
                  rotate: bool) -> SecAggIdentityFields:
    """The device's signing identity: kept from its credentials file when it is still
    certified by this authority for the same id, else a new one."""
    assert account.region is not None and account.client is not None
    path = credentials_path(out, account.username)
    if path.exists() and not rotate:
        try:
            old = load_credentials(path).secagg_identity()
        except ValueError:
            old = None
        if old is not None and old.authority == authority.public and (
                old.federation, old.region, old.client) == (federation, account.region,
                                                            account.client):
            return _identity_fields(old)
    return _identity_fields(authority.issue(federation, account.region, account.client))


def _identity_fields(ident: DeviceIdentity) -> SecAggIdentityFields:
    b64 = base64.b64encode
    return SecAggIdentityFields(signing_key=b64(ident.private_bytes).decode(),
                                certificate=b64(ident.certificate).decode(),
                                authority=b64(ident.authority).decode())


def _password_for(out: Path, account: Account, federation: str, rotate: bool,
                  result: ProvisionResult, label: str = "") -> str:
    path = credentials_path(out, account.username)
    if path.exists() and not rotate:
        old = load_credentials(path)
        same = (old.federation, old.role, old.region, old.client) == (
            federation, account.role, account.region, account.client)
        if same:
            result.kept.append(label + account.username)
            return old.password
    result.added.append(label + account.username)
    return secrets.token_urlsafe(24)


def _manifest(spec: ProvisionSpec, accounts: list[Account]) -> dict:
    manifest = {
        "federation": spec.federation,
        "broker": spec.broker_url,
        "hosts": spec.hosts,
        "regions": spec.regions,
        "accounts": [{"username": a.username, "role": a.role, "region": a.region,
                      "client": a.client} for a in accounts],
    }
    if spec.sites:
        manifest["sites"] = {r: {"hosts": s.hosts, "port": s.port, "broker": s.url}
                             for r, s in spec.sites.items()}
    return manifest


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with exactly ``mode`` through an exclusive, unpredictable temp file: the
    secret never exists with looser permissions, nor in a file someone else opened first."""
    write_bytes(path, data, mode)


def _broker_owner(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"--broker-user {user!r}: no such user on this machine") from None
    return entry.pw_uid, entry.pw_gid


def _hand_to_broker_user(user: str | None, owner: tuple[int, int] | None, paths: list[Path],
                         result: ProvisionResult) -> None:
    """Mosquitto started as root drops to its ``user`` before reading the password file, so
    the secrets it reads must belong to that user (they stay unreadable to everyone else)."""
    if user is None or owner is None:
        if os.geteuid() == 0:
            _note_once(result,
                       "running as root without --broker-user: a root-started Mosquitto drops "
                       "to user 'mosquitto' and cannot read passwd/server.key; pass "
                       "--broker-user")
        return
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, *owner)
    elif getpass.getuser() != user:
        result.notes.append(f"chown {user}: " + " ".join(str(p) for p in paths)
                            + " (as root), so the broker can read them")


def _note_once(result: ProvisionResult, note: str) -> None:
    if note not in result.notes:
        result.notes.append(note)


def summary_text(spec: ProvisionSpec, result: ProvisionResult) -> str:
    """What ``hub provision`` prints: what changed, anything to do by hand, next commands."""
    out = result.out
    everyone = result.accounts + [a for accts in result.sites.values() for a in accts]
    counts = {role: sum(a.role == role for a in everyone) for role in ("device", "regional")}
    where = f"{spec.broker_url} and {len(spec.sites)} bridged site brokers" if spec.sites \
        else spec.broker_url
    lines = [
        f"provisioned federation {spec.federation!r} in {out} for {where}: "
        f"{counts['device']} devices, {counts['regional']} regional hubs, cloud, monitor",
    ]
    for label, names in (("new credentials", result.added), ("kept", result.kept),
                         ("removed", result.removed)):
        if names:
            lines.append(f"  {label}: {', '.join(names)}")
    lines += [f"  note: {note}" for note in result.notes]
    creds = out / "credentials"
    site_creds = site_dir(out, "REGION") / "credentials" if spec.sites else creds
    sharded = ", ".join(f"{region} {k}" for region, k in sorted(spec.intake_shards.items())
                        if k > 1)
    lines += ["next:", f"  mosquitto -c {out.resolve() / 'mosquitto.conf'}"]
    if spec.sites:
        lines.append(f"  on the gateway of each REGION (a copy of {site_dir(out, 'REGION')}): "
                     f"mosquitto -c {site_dir(out, 'REGION').resolve() / 'mosquitto.conf'}")
    lines += [
        f"  hub serve --role cloud --federation {spec.federation} --config FED.yaml "
        f"--state-dir STATE --credentials {creds / 'hub-cloud.json'}",
        f"  hub serve --role regional --region REGION --federation {spec.federation} "
        f"--state-dir STATE --credentials {site_creds}/hub-regional-REGION.json"
        + (f" [--intake-shards K: {sharded}]" if sharded else ""),
        f"  edge-client join --federation {spec.federation} --region REGION --client-id DEV "
        f"--data DATA --state-dir STATE --credentials DEV.json   (copy {site_creds}/DEV.json "
        "to the device; it holds the CA)",
        f"  hub status --federation {spec.federation} --credentials {creds / 'monitor.json'}",
        f"  or install the systemd units in {out / 'systemd'}"
        + (f" and {site_dir(out, 'REGION') / 'systemd'}" if spec.sites else "")
        + " (README: A real deployment)",
    ]
    return "\n".join(lines)
