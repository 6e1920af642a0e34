"""The broker authentication options every CLI that connects offers, defined once.

``hub serve``, ``hub status`` and ``edge-client join`` take the same four options with the
same meaning (see ``fedsa_common.net.broker_auth.resolve_connection`` for how they combine), and
report a bad combination as a usage error naming the option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsa_common.net.broker_auth import (
    Connection,
    Role,
    check_identity,
    parse_url,
    resolve_connection,
    tls_context,
)

Credentials = Annotated[Path | None, typer.Option(
    "--credentials", help="Credentials file written by `hub provision` (user, password, CA, "
    "broker URL). Its broker URL is used when --broker is not given.",
    rich_help_panel="Broker authentication")]
Username = Annotated[str | None, typer.Option(
    "--username", help="MQTT user name (overrides the credentials file).",
    rich_help_panel="Broker authentication")]
PasswordFile = Annotated[Path | None, typer.Option(
    "--password-file", help="File whose first line is the MQTT password (kept out of the "
    "process list, unlike a password in the URL).", rich_help_panel="Broker authentication")]
TlsCa = Annotated[Path | None, typer.Option(
    "--tls-ca", help="CA certificate (PEM) that signed the broker's certificate; needs an "
    "mqtts:// URL. Without it (and without --credentials) mqtts:// trusts the system store.",
    rich_help_panel="Broker authentication")]


def connection_from_options(
    broker: str | None,
    credentials: Path | None,
    username: str | None,
    password_file: Path | None,
    tls_ca: Path | None,
    *,
    default_url: str | None,
    federation: str,
    role: Role | tuple[Role, ...],
    region: str | None = None,
    client: str | None = None,
) -> Connection:
    """Resolve the options, check the credentials fit this process, or raise a usage error."""
    try:
        conn = resolve_connection(broker, credentials=credentials, username=username,
                                  password_file=password_file, tls_ca=tls_ca,
                                  default_url=default_url)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=_hint(credentials, password_file,
                                                            tls_ca)) from None
    if conn.auth is not None and conn.url is not None and parse_url(conn.url).tls:
        try:  # a CA that cannot be read or is not PEM: now, not in the network thread later
            tls_context(conn.auth)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--tls-ca" if tls_ca is not None
                                     else "--credentials") from None
    try:
        check_identity(conn.credentials, federation=federation, role=role, region=region,
                       client=client)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--credentials") from None
    return conn


def _hint(credentials: Path | None, password_file: Path | None, tls_ca: Path | None) -> str:
    given = [name for name, value in (("--credentials", credentials),
                                      ("--password-file", password_file),
                                      ("--tls-ca", tls_ca)) if value is not None]
    return "/".join(["--broker", *given])
