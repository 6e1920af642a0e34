"""The systemd units ``hub provision`` writes: what each starts (table-driven), and
``systemd-analyze verify`` on every one of them (a real systemd binary checks the syntax, the
directives and that the programs exist; skipped where it is not installed).  A region the
federation configuration serves with several intake processes (``intake_shards``) gets
``--intake-shards K`` in its regional unit, from ``--config`` or OUT/federation.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hub.cli import app
from hub.provision import ProvisionSpec, Site, default_programs, provision
from hub.provision_units import Programs

REGIONS = {"north": ["dev-0", "dev-1"], "south": ["dev-2"]}
SITES = {"north": Site(["gw-north.example"], 8884), "south": Site(["gw-south.example"])}
SHARDS = {"north": 2, "south": 1}  # the configuration's intake_shards
PROGRAMS = Programs(hub="/opt/fedsa/bin/hub", edge_client="/opt/fedsa/bin/edge-client",
                    mosquitto="/usr/sbin/mosquitto")


@pytest.fixture(scope="module")
def sites_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("units") / "fed"
    provision(ProvisionSpec("fed", REGIONS, hosts=["cloud.example"], sites=SITES,
                            programs=default_programs(), intake_shards=SHARDS), out)
    return out


@pytest.fixture(scope="module")
def listed_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("listed") / "fed"
    provision(ProvisionSpec("fed", REGIONS, hosts=["cloud.example"], sites=SITES,
                            programs=PROGRAMS, intake_shards=SHARDS), out)
    return out


def exec_start(path: Path) -> str:
    return next(line.partition("=")[2] for line in path.read_text().splitlines()
                if line.startswith("ExecStart="))


# (directory under OUT, unit file) -> fragments of its ExecStart
UNITS = {
    (".", "fedsa-broker.service"): ["/usr/sbin/mosquitto -c {out}/mosquitto.conf"],
    (".", "fedsa-hub-cloud.service"): [
        "/opt/fedsa/bin/hub serve --role cloud --federation fed",
        "--config {out}/federation.yaml", "--state-dir %S/fedsa-edge/cloud",
        "--credentials ${CREDENTIALS_DIRECTORY}/broker.json"],
    ("sites/north", "fedsa-broker.service"): [
        "/usr/sbin/mosquitto -c {out}/sites/north/mosquitto.conf"],
    ("sites/north", "fedsa-hub-regional-north.service"): [
        "hub serve --role regional --region north --federation fed",
        "--state-dir %S/fedsa-edge/regional-north", "--intake-shards 2"],
    ("sites/north", "fedsa-edge-client-north@.service"): [
        "/opt/fedsa/bin/edge-client join --federation fed --region north --client-id %i",
        "--state-dir %S/fedsa-edge/%i", "--data ${FEDSA_DATA}"],
    ("sites/south", "fedsa-hub-regional-south.service"): ["--region south"],
}


@pytest.mark.parametrize("where,name", sorted(UNITS))
def test_each_unit_starts_the_right_process(listed_dir, where, name):
    line = exec_start(listed_dir / where / "systemd" / name)
    for fragment in UNITS[where, name]:
        assert fragment.replace("{out}", str(listed_dir.resolve())) in line, line
    if name != "fedsa-hub-regional-north.service":  # one process: the option left out
        assert "--intake-shards" not in line, line


def test_each_directory_has_exactly_its_units(sites_dir):
    def names(where: str) -> set[str]:
        return {p.name for p in (sites_dir / where / "systemd").iterdir()}

    assert names(".") == {"fedsa-broker.service", "fedsa-hub-cloud.service"}
    assert names("sites/north") == {"fedsa-broker.service", "fedsa-hub-regional-north.service",
                                    "fedsa-edge-client-north@.service"}
    cloud = (sites_dir / "systemd" / "fedsa-hub-cloud.service").read_text()
    assert f"LoadCredential=broker.json:{sites_dir.resolve()}/credentials/hub-cloud.json" \
        in cloud.splitlines()
    assert "DynamicUser=yes" in cloud and "Restart=on-failure" in cloud


def test_one_broker_directory_serves_every_region(tmp_path):
    out = tmp_path / "one"
    provision(ProvisionSpec("fed", REGIONS, programs=PROGRAMS), out)
    assert {p.name for p in (out / "systemd").iterdir()} == {
        "fedsa-broker.service", "fedsa-hub-cloud.service",
        "fedsa-hub-regional-north.service", "fedsa-hub-regional-south.service",
        "fedsa-edge-client-north@.service", "fedsa-edge-client-south@.service"}
    provision(ProvisionSpec("fed", {"north": ["dev-0"]}, programs=PROGRAMS), out)
    assert "fedsa-hub-regional-south.service" not in {p.name for p in
                                                      (out / "systemd").iterdir()}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (systemd's own unit checker)")
def test_systemd_analyze_verify_accepts_every_unit(sites_dir, tmp_path):
    units = sorted(sites_dir.glob("**/systemd/*.service"))
    assert len(units) == 2 + 3 * len(REGIONS)
    for unit in units:
        # a template is verified as an instance: the device's unit as systemd would run it
        path = unit
        if unit.name.endswith("@.service"):
            path = tmp_path / unit.name.replace("@.service", "@dev-0.service")
            path.write_text(unit.read_text())
        done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr.strip(), (unit, done.stderr)


def regional_exec(out: Path, region: str) -> str:
    return exec_start(out / "systemd" / f"fedsa-hub-regional-{region}.service")


def test_provision_reads_intake_shards_from_the_federation_configuration(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump({"intake_shards": {"north": 3}}))
    args = ["provision", "--federation", "fed", "--out", str(out), "--region", "north=dev-0",
            "--region", "south"]
    done = runner.invoke(app, [*args, "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert regional_exec(out, "north").endswith(" --intake-shards 3")
    assert "--intake-shards" not in regional_exec(out, "south")
    assert "[--intake-shards K: north 3]" in done.stdout

    # a re-run without --config reads the cloud unit's OUT/federation.yaml
    (out / "federation.yaml").write_text(yaml.safe_dump({"intake_shards": {"south": 2}}))
    assert runner.invoke(app, args).exit_code == 0
    assert "--intake-shards" not in regional_exec(out, "north")
    assert regional_exec(out, "south").endswith(" --intake-shards 2")

    config.write_text(yaml.safe_dump({"intake_shards": {"west": 2}}))
    unknown = runner.invoke(app, [*args, "--config", str(config)])
    assert unknown.exit_code == 2
    assert "intake_shards: west is not a provisioned region" in unknown.output
    config.write_text(yaml.safe_dump({"intake_shards": {"north": 0}}))
    bad = runner.invoke(app, [*args, "--config", str(config)])
    assert bad.exit_code == 2 and "intake_shards" in bad.output and "--config" in bad.output


def test_intake_shards_are_checked_by_name():
    with pytest.raises(ValueError, match=r"intake_shards\.north: 0 not in 1\.\."):
        ProvisionSpec("fed", REGIONS, intake_shards={"north": 0})
