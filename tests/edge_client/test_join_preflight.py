"""``edge-client join`` fails fast: a bad broker URL, name or ``--data`` is one boxed error
naming the option (exit 2) before the device loads torch's model or contacts a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import edge_client.worker
from edge_client.cli import app


@pytest.fixture
def join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke ``join`` with good defaults overridden by ``extra``; reaching the device loop
    fails the test, so every case below must stop in the checks."""

    def never(*_args, **_kw):
        raise AssertionError("join got past its checks")

    monkeypatch.setattr(edge_client.worker, "run_devices", never)
    good = tmp_path / "ok.csv"
    good.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)))

    def invoke(**extra: str):
        opts = {"--federation": "fed", "--region": "north", "--client-id": "dev-0",
                "--data": str(good), "--state-dir": str(tmp_path / "state"),
                "--broker": "mqtt://127.0.0.1:1", **extra}
        args = ["join", *[x for kv in opts.items() for x in kv]]
        result = CliRunner().invoke(app, args)
        assert not (tmp_path / "state").exists()
        return result.exit_code, " ".join(result.output.replace("│", " ").split())

    invoke.dir = tmp_path  # type: ignore[attr-defined]
    return invoke


def test_bad_data_is_reported_before_anything_loads(join) -> None:
    d = join.dir
    latin = d / "latin.csv"
    latin.write_bytes(b"text,label\nok,a\n" + "caf\xe9,b\n".encode("latin-1"))
    (d / "nolabel.csv").write_text("text,y\nhi,a\n")
    (d / "empty.csv").write_text("")
    for data, why in [
        (str(d / "missing.csv"), "missing.csv: no such file"),
        (str(d / "nolabel.csv"), "missing column 'label'"),
        (str(d / "empty.csv"), "empty file"),
        (str(latin), "latin.csv: line 3: not valid utf-8 text (byte 0xe9)"),
        (f"{latin}?colour=red", "option 'colour': unknown option"),
    ]:
        code, out = join(**{"--data": data})
        assert code == 2, out
        assert out.startswith("error: ") and "--data" in out and why in out, out
        assert "Traceback" not in out


@pytest.mark.parametrize(("option", "value", "why"), [
    ("--broker", "localhost:1883", "must look like mqtt://host:port"),
    ("--broker", "ws://broker:9001", "WebSockets is not supported"),
    ("--broker", "mqtt://broker:99999", "bad port"),
    ("--broker", "mqtt://:1883", "no host"),
    ("--client-id", "dev 0", "client id 'dev 0' must match"),
    ("--federation", "a/b", "federation 'a/b' must match"),
])
def test_bad_connection_options_name_the_option(join, option: str, value: str, why: str
                                                ) -> None:
    code, out = join(**{option: value})
    assert code == 2, out
    assert out.startswith("error: ") and out.endswith(f"({option})") and why in out, out


def test_a_good_file_in_another_encoding_passes_the_checks(join) -> None:
    latin = join.dir / "latin.csv"
    latin.write_bytes(b"text,label\n" + "caf\xe9,b\n".encode("latin-1") * 4)
    with pytest.raises(AssertionError, match="past its checks"):
        CliRunner().invoke(app, ["join", "--federation", "fed", "--region", "north",
                                 "--client-id", "dev-0", "--data", f"{latin}?encoding=latin-1",
                                 "--state-dir", str(join.dir / "s")], catch_exceptions=False)
