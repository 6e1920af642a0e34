"""``hub provision`` output without a broker: who may read/write each topic, the password file
format, the certificates, and what a re-run keeps (tests/hub/test_provision.py runs the
generated files in a real Mosquitto)."""

from __future__ import annotations

import base64
import inspect
import ipaddress
import json
import os
import pwd
import stat

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from fedsa_common.net.broker_auth import AUTHORITY_KEY_BYTES, load_credentials, read_authority_file
from fedsa_common.privacy.secagg.errors import SecAggError
from fedsa_common.privacy.secagg.identity import PUBLIC_BYTES
from fedsa_common.wire.protocol import Topics
from hub.provision import (
    AUTHORITY_KEY,
    AUTHORITY_PUB,
    ProvisionSpec,
    merge_regions,
    mosquitto_password_line,
    parse_region_options,
    provision,
    read_devices_csv,
    render_mosquitto_conf,
)
from hub.provision_acl import Account, federation_accounts, render_acl, rules_for
from hub.provision_tls import issue_server_cert, new_ca

REGIONS = {"north": ["dev-0", "dev-1"], "south": ["dev-2"]}
T = Topics("fed")
DEVICES = {"dev-0", "dev-1", "dev-2"}
HUBS = {"hub-regional-north", "hub-regional-south"}


def allowed(access: str, topic: str) -> set[str]:
    """Accounts whose ACL lets them ``access`` the concrete ``topic``."""
    return {a.username for a in federation_accounts(REGIONS)
            if any(r.access == access and mqtt.topic_matches_sub(r.topic, topic)
                   for r in rules_for(a, T))}


def frame(topic: str) -> str:
    return f"{topic}/0"  # chunked messages travel on T/{frame index}


# topic -> (who may publish it, who may receive it); chunked topics are checked on a frame
ACCESS = {
    # the cloud reads back its own retained announcement and global (hub federation:
    # a restarted cloud clears a retained "finished", a fresh one refuses to start over it)
    "announce": (frame(T.announce), {"hub-cloud"},
                 DEVICES | HUBS | {"monitor", "hub-cloud"}),
    "global_params": (frame(T.global_params), {"hub-cloud"}, DEVICES | {"hub-cloud"}),
    # lifecycle commands (hub federation extend/stop) run with the cloud's credentials
    "control": (T.control, {"hub-cloud"}, {"hub-cloud"}),
    "update": (frame(T.update("north", "dev-0")), {"dev-0"}, {"hub-regional-north"}),
    # a region served by several intake processes (they and their leader log in as the
    # regional hub): sharded updates, and partials, acks and status between them
    "update_any_shard": (frame(T.update("north", "dev-0", 1)), {"dev-0"},
                         {"hub-regional-north"}),
    "device_update": (frame(T.device_update("north", "dev-0", 2)), {"dev-0"},
                      {"hub-regional-north"}),
    "intake_partial": (frame(T.intake_partial("north", 1)), {"hub-regional-north"},
                       {"hub-regional-north"}),
    "intake_ack": (T.intake_ack("north", 1), {"hub-regional-north"}, {"hub-regional-north"}),
    # hub status (the monitor) lists the intake processes under their region
    "intake_status": (T.intake_status("north", 1), {"hub-regional-north"},
                      {"hub-regional-north", "monitor"}),
    # not the monitor: a partial can be a single, un-noised device update
    "partial": (frame(T.partial("north")), {"hub-regional-north"}, {"hub-cloud"}),
    "presence": (T.presence("north", "dev-0"), {"dev-0"},
                 {"hub-regional-north", "hub-cloud", "monitor"}),
    "metrics": (T.metrics("north", "dev-0"), {"dev-0"}, {"hub-cloud", "monitor"}),
    "ack": (T.ack("north", "dev-0"), {"hub-regional-north"}, {"dev-0", "monitor"}),
    "secagg_up": (frame(T.secagg_up("north", "dev-0")), {"dev-0"}, {"hub-regional-north"}),
    "secagg_down": (frame(T.secagg_down("north", "dev-0")), {"hub-regional-north"}, {"dev-0"}),
    "partial_ack": (T.partial_ack("north"), {"hub-cloud"}, {"hub-regional-north", "monitor"}),
    "summary": (T.summary, {"hub-cloud"}, {"monitor"}),
    # devices of north read it to warn when no hub serves their region
    "status": (T.status("regional", "north"), {"hub-regional-north"},
               {"hub-cloud", "monitor", "dev-0", "dev-1"}),
}


@pytest.mark.parametrize("name", sorted(ACCESS))
def test_who_may_publish_and_receive_each_topic(name):
    topic, writers, readers = ACCESS[name]
    assert allowed("write", topic) == writers
    assert allowed("read", topic) == readers


def test_every_topic_of_the_protocol_is_covered():
    """A new topic in Topics needs ACL rules (hub/provision_acl.py) and a row in ACCESS."""
    members = {n for n, _ in inspect.getmembers(Topics) if not n.startswith("_")}
    filters = {"all", "update_filter", "partial_filter", "presence_filter", "metrics_filter",
               "status_filter", "secagg_up_filter", "intake_partial_filter"}
    assert members - filters == set(ACCESS)


def test_a_region_cannot_reach_another_region():
    assert allowed("read", frame(T.update("south", "dev-2"))) == {"hub-regional-south"}
    assert allowed("write", T.ack("south", "dev-2")) == {"hub-regional-south"}
    assert allowed("write", frame(T.partial("south"))) == {"hub-regional-south"}
    assert allowed("write", T.status("cloud", "cloud")) == {"hub-cloud"}
    assert allowed("write", T.update("north", "dev-0")) == set()  # unframed: nobody
    assert allowed("read", frame(T.secagg_up("south", "dev-2"))) == {"hub-regional-south"}
    assert allowed("read", frame(T.secagg_down("north", "dev-1"))) == {"dev-1"}


def test_rendered_acl_blocks():
    text = render_acl("fed", federation_accounts(REGIONS))
    block = text.split("\nuser dev-0\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write fedsa/fed/region/north/update/dev-0/+",
        "topic write fedsa/fed/region/north/update/+/dev-0/+",
        "topic write fedsa/fed/presence/north/dev-0",
        "topic write fedsa/fed/metrics/north/dev-0",
        "topic write fedsa/fed/region/north/secagg/up/dev-0/+",
        "topic read fedsa/fed/round/+",
        "topic read fedsa/fed/global/+",
        "topic read fedsa/fed/ack/north/dev-0",
        "topic read fedsa/fed/status/regional/north",
        "topic read fedsa/fed/region/north/secagg/down/dev-0/+",
    ]
    assert text.count("\nuser ") == 7 and "\ntopic" not in text.split("\nuser ")[0]
    assert "pattern" not in text and "#" not in text.replace("# ", "")


def test_account_names_must_be_unambiguous():
    with pytest.raises(ValueError, match="reserved"):
        federation_accounts({"cloud": ["dev-0"]})
    with pytest.raises(ValueError, match="monitor account"):
        federation_accounts({"north": ["monitor"]})
    with pytest.raises(ValueError, match="device of region north"):
        federation_accounts({"north": ["dev-0"], "south": ["dev-0"]})
    with pytest.raises(ValueError, match="client id"):
        federation_accounts({"north": ["dev/0"]})
    accounts = federation_accounts({"north": []})
    assert accounts[-1] == Account("hub-regional-north", "regional", region="north")


def test_password_line_matches_mosquitto_passwd():
    # written by `mosquitto_passwd -b pwfile alice s3cret` (Mosquitto 2.0.11)
    expected = ("alice:$7$101$6LTA/i6gUclmG6AC$MKzAJbQu7SxT4ZXRtW8//GYA6veXizvDOlUbhFUt4OXPg1TY"
                "ZUwi7emXBiDPfMP9tcnRnajFKQYSD3uTBxrcaA==")
    salt = base64.b64decode("6LTA/i6gUclmG6AC")
    assert mosquitto_password_line("alice", "s3cret", salt=salt) == expected
    fresh = mosquitto_password_line("alice", "s3cret")
    assert fresh.startswith("alice:$7$101$") and fresh != expected  # random salt
    with pytest.raises(ValueError):
        mosquitto_password_line("a:b", "pw")


def test_server_certificate_verifies_for_every_host():
    ca = new_ca("fed")
    server = issue_server_cert(ca, ["broker.example", "10.1.2.3", "::1"])
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier
    for name in (x509.DNSName("broker.example"),
                 x509.IPAddress(ipaddress.ip_address("10.1.2.3"))):
        chain = verifier(name).verify(server.cert, [])
        assert chain[-1] == ca.cert
    with pytest.raises(x509.verification.VerificationError):
        verifier(x509.DNSName("other.example")).verify(server.cert, [])
    other_ca = new_ca("fed")
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(Store([other_ca.cert])).build_server_verifier(
            x509.DNSName("broker.example")).verify(server.cert, [])
    with pytest.raises(ValueError, match="neither"):
        issue_server_cert(ca, ["bad host"])


def test_input_parsing(tmp_path):
    assert parse_region_options(["north=dev-0, dev-1", "south", "north=dev-3"]) == {
        "north": ["dev-0", "dev-1", "dev-3"], "south": []}
    for typo in ("north=dev-0,,dev-1", "north=dev-0,", "north=,dev-0"):
        with pytest.raises(ValueError, match="empty device name"):
            parse_region_options([typo])
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text("client,region\n# comment\ndev-4,south\n\ndev-5,east\n")
    assert read_devices_csv(csv_path) == {"south": ["dev-4"], "east": ["dev-5"]}
    assert merge_regions({"south": ["dev-2"]}, {"south": ["dev-4"]}) == {
        "south": ["dev-2", "dev-4"]}
    csv_path.write_text("dev-4,south,extra\n")
    with pytest.raises(ValueError, match=r"devices\.csv:1"):
        read_devices_csv(csv_path)


def test_provision_writes_private_files(tmp_path):
    out = tmp_path / "broker"
    spec = ProvisionSpec("fed", REGIONS, hosts=["broker.example", "10.1.2.3"], port=8884)
    result = provision(spec, out)
    assert set(result.added) == {"hub-cloud", "monitor", *HUBS, *DEVICES}
    for secret in ("ca.key", "server.key", "passwd", *(f"credentials/{u}.json"
                                                         for u in result.added)):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((out / "credentials").stat().st_mode) == 0o700
    creds = load_credentials(out / "credentials" / "dev-0.json")
    assert (creds.role, creds.region, creds.client) == ("device", "north", "dev-0")
    assert creds.broker == "mqtts://broker.example:8884"
    assert creds.ca_pem == (out / "ca.crt").read_text()
    passwords = {u: load_credentials(out / "credentials" / f"{u}.json").password
                 for u in result.added}
    assert len(set(passwords.values())) == len(passwords) and all(
        len(p) >= 32 for p in passwords.values())
    lines = (out / "passwd").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(passwords)
    assert all(p not in (out / "passwd").read_text() for p in passwords.values())
    conf = (out / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", "listener 8884", f"password_file {out / 'passwd'}",
                 f"acl_file {out / 'acl'}", f"keyfile {out / 'server.key'}"):
        assert line in conf.splitlines()
    manifest = json.loads((out / "provision.json").read_text())
    assert manifest["regions"] == REGIONS and "password" not in json.dumps(manifest)


def test_rerun_keeps_ca_and_passwords_and_drops_removed_devices(tmp_path):
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", REGIONS), out)
    before = {p.stem: load_credentials(p).password for p in (out / "credentials").glob("*")}
    ca_before = (out / "ca.crt").read_bytes()

    regions = {"north": ["dev-0", "dev-9"], "south": ["dev-2"]}  # dev-1 leaves, dev-9 joins
    result = provision(ProvisionSpec("fed", regions), out)
    assert result.added == ["dev-9"] and result.removed == ["dev-1"]
    assert (out / "ca.crt").read_bytes() == ca_before
    after = {p.stem: load_credentials(p).password for p in (out / "credentials").glob("*")}
    assert set(after) == set(before) - {"dev-1"} | {"dev-9"}
    assert all(after[u] == before[u] for u in after if u in before)
    assert "user dev-1\n" not in (out / "acl").read_text()

    moved = provision(ProvisionSpec("fed", {"south": ["dev-0", "dev-2"]}), out)
    assert "dev-0" in moved.added  # a device that changes region gets a new password
    rotated = provision(ProvisionSpec("fed", regions), out, rotate=True)
    assert set(rotated.added) == {a.username for a in rotated.accounts}
    assert (out / "ca.crt").read_bytes() == ca_before

    with pytest.raises(ValueError, match="holds federation 'fed'"):
        provision(ProvisionSpec("other", regions), out)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        provision(ProvisionSpec("fed", regions), stranger)


def test_conf_and_spec_validation(tmp_path):
    spec = ProvisionSpec("fed", REGIONS, hosts=["::1"], bind="127.0.0.1",
                         broker_user="mosquitto")
    assert spec.broker_url == "mqtts://[::1]:8883"
    conf = render_mosquitto_conf(spec, tmp_path).splitlines()
    assert "listener 8883 127.0.0.1" in conf and "user mosquitto" in conf
    assert "max_queued_messages 1000" in conf  # small regions: Mosquitto's default
    big = ProvisionSpec("fed", {"a": [f"d{i}" for i in range(300)], "b": ["x"]})
    assert "max_queued_messages 2400" in render_mosquitto_conf(big, tmp_path).splitlines()
    # many even regions: the cloud's retained presences of every device size it
    wide = ProvisionSpec("fed", {f"r{r}": [f"d{r}-{i}" for i in range(100)] for r in range(20)})
    assert "max_queued_messages 2100" in render_mosquitto_conf(wide, tmp_path).splitlines()
    with pytest.raises(ValueError, match="no regions"):
        ProvisionSpec("fed", {})
    with pytest.raises(ValueError, match="federation"):
        ProvisionSpec("fed/x", REGIONS)
    with pytest.raises(ValueError, match="no such user"):
        provision(ProvisionSpec("fed", REGIONS, broker_user="no-such-user-x"), tmp_path / "o")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_broker_user_owns_what_the_broker_reads(tmp_path):
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", REGIONS, broker_user="mosquitto"), out)
    for name in ("passwd", "server.key", "data"):
        assert (out / name).stat().st_uid == entry.pw_uid
    assert (out / "ca.key").stat().st_uid == 0  # the CA key stays with the operator
    assert (out / "credentials" / "dev-0.json").stat().st_uid == 0


def test_devices_get_signing_identities_their_peers_verify(tmp_path):
    """Issue 15, finding 2: every device's credentials hold a signing key certified by the
    provisioning authority for its own id; a peer checks it with the authority key in its
    own file, and a certificate moved to another id does not verify."""
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", REGIONS), out)
    assert stat.S_IMODE((out / AUTHORITY_KEY).stat().st_mode) == 0o600
    idents = {d: load_credentials(out / "credentials" / f"{d}.json").secagg_identity()
              for d in DEVICES}
    assert all(i is not None for i in idents.values())
    assert load_credentials(out / "credentials" / "hub-cloud.json").secagg is None
    dev0, dev1 = idents["dev-0"], idents["dev-1"]
    assert dev0 is not None and dev1 is not None
    assert (dev0.region, dev0.client) == ("north", "dev-0") and dev0.authority == dev1.authority
    dev0.check_member("dev-1", dev1.public, dev1.certificate)  # same region: verifies
    with pytest.raises(SecAggError, match="secagg_unauthenticated"):
        dev0.check_member("dev-0x", dev1.public, dev1.certificate)  # another id
    with pytest.raises(SecAggError, match="secagg_unauthenticated"):
        dev0.check_member("dev-1", dev0.public, dev1.certificate)  # another key

    # a re-run keeps identities; a device added later is certified by the same authority
    provision(ProvisionSpec("fed", {**REGIONS, "north": [*REGIONS["north"], "dev-9"]}), out)
    again = load_credentials(out / "credentials" / "dev-0.json").secagg_identity()
    assert again is not None and again.public == dev0.public
    late = load_credentials(out / "credentials" / "dev-9.json").secagg_identity()
    assert late is not None
    dev0.check_member("dev-9", late.public, late.certificate)
    provision(ProvisionSpec("fed", REGIONS), out, rotate=True)
    rotated = load_credentials(out / "credentials" / "dev-0.json").secagg_identity()
    assert rotated is not None and rotated.public != dev0.public


def test_a_tampered_identity_in_a_credentials_file_is_refused(tmp_path):
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", REGIONS), out)
    path = out / "credentials" / "dev-0.json"
    raw = json.loads(path.read_text())
    other = json.loads((out / "credentials" / "dev-1.json").read_text())
    raw["secagg"]["certificate"] = other["secagg"]["certificate"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="certificate does not certify"):
        load_credentials(path).secagg_identity()


def test_regional_hubs_get_the_authority_public_key_and_nobody_its_private_key(tmp_path):
    """Issue 15: a regional hub checks device certificates itself (so one bad certificate
    does not cost its region the round); it gets the authority's *public* key in its
    credentials, which ``hub serve --credentials`` reads, and the directory holds it as
    ``secagg-authority.pub`` for hubs run without provisioned credentials."""
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", REGIONS), out)
    dev0 = load_credentials(out / "credentials" / "dev-0.json").secagg_identity()
    assert dev0 is not None
    assert read_authority_file(out / AUTHORITY_PUB) == dev0.authority
    assert stat.S_IMODE((out / AUTHORITY_PUB).stat().st_mode) == 0o644
    for hub in HUBS:
        creds = load_credentials(out / "credentials" / f"{hub}.json")
        assert creds.secagg_authority_key() == dev0.authority
    for other in ("hub-cloud", "monitor", *DEVICES):
        assert load_credentials(out / "credentials" / f"{other}.json").secagg_authority is None
    private = base64.b64decode((out / AUTHORITY_KEY).read_text())
    for path in (out / "credentials").glob("*.json"):
        assert base64.b64encode(private).decode() not in path.read_text()


@pytest.mark.parametrize(("text", "why"), [("not base64!", "not base64"),
                                           (base64.b64encode(b"x" * 31).decode(),
                                            "32 bytes, not 31")])
def test_a_malformed_authority_key_is_refused_naming_where(tmp_path, text, why):
    path = tmp_path / "secagg-authority.pub"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"secagg authority file {path}: .*{why}"):
        read_authority_file(path)
    with pytest.raises(ValueError, match="cannot read secagg authority file"):
        read_authority_file(tmp_path / "missing.pub")
    assert AUTHORITY_KEY_BYTES == PUBLIC_BYTES
