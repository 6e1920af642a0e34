"""``edge-client join --credentials``: a device refuses credentials provisioned for another
identity before it loads anything (pure CLI check; no broker is started)."""

from __future__ import annotations

from typer.testing import CliRunner

from edge_client.cli import app
from hub.provision import ProvisionSpec, provision


def test_join_refuses_another_devices_credentials(tmp_path):
    out = tmp_path / "broker"
    provision(ProvisionSpec("fed", {"north": ["dev-0", "dev-1"]}), out)
    base = ["join", "--federation", "fed", "--region", "north", "--data", "20newsgroups",
            "--state-dir", str(tmp_path / "state")]
    runner = CliRunner()
    for extra, why in [
        (["--client-id", "dev-1", "--credentials", str(out / "credentials/dev-0.json")],
         "client 'dev-0'"),
        (["--client-id", "dev-0", "--credentials", str(out / "credentials/hub-cloud.json")],
         "cloud account"),
        (["--client-id", "dev-0", "--broker", "mqtt://127.0.0.1:1883", "--tls-ca",
          str(out / "ca.crt")], "not an mqtts:// URL"),
    ]:
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2, result.output
        assert why in " ".join(result.output.split()), result.output
    assert not (tmp_path / "state").exists()
