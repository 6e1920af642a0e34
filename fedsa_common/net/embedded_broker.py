"""Run an amqtt broker as a stand-alone process: the fallback when Mosquitto is not installed.

Started by ``fedsa_common.net.broker.start_broker(kind="embedded")`` as
``python -m fedsa_common.net.embedded_broker --host 127.0.0.1 --port PORT``. It is set up to look
like our Mosquitto setup to MQTT 3.1.1 clients: one TCP listener, anonymous access with
persistent sessions that get QoS 1 messages queued while offline, no ``$SYS`` chatter, a
packet size cap, no will after a clean DISCONNECT, and no QoS 1 message lost when a persistent
client leaves while it is being delivered (``OpenAuthPlugin`` and ``install_packet_hooks`` close
the gaps between amqtt 0.12 and Mosquitto). It exits on
SIGTERM/SIGINT, and when its parent process goes away, so a crashed test run leaves no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import DISCONNECT, MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

log = logging.getLogger("fedsa.embedded_broker")
SHUTDOWN_GRACE_S = 1.0


class PacketTooLargeError(Exception):
    """Raised inside amqtt's reader when a packet exceeds the cap; amqtt then drops the client."""


_CLEAN_DISCONNECT = "_fedsa_clean_disconnect"
_STOPPING = "_fedsa_stopping"
# The running broker, so that a delivery that failed on a closing connection can find the
# session's newer connection, if the client came back meanwhile.
_broker: Broker | None = None
_resends: set[asyncio.Task[Any]] = set()  # held so that the loop does not drop them mid-flight


def install_packet_hooks(max_packet_bytes: int) -> None:
    """Patch three gaps between amqtt 0.12 and Mosquitto, seen from a 3.1.1 client.

    1. Packet size cap. amqtt reads every packet fully into memory and has no size option. We
       wrap the fixed-header decoder: an exception that is not an ``MQTTError`` ends amqtt's
       reader loop and closes the connection, which is what Mosquitto does for oversized
       packets.
    2. Will after a clean DISCONNECT. amqtt loses a DISCONNECT, and publishes the will as if
       the client had died, when the socket closes right after it (paho closes immediately:
       the reader loop cancels the task handling DISCONNECT) or when it arrives before the
       broker's per-client loop starts waiting for it (connect, then close at once, while the
       broker is still replaying retained messages). We note DISCONNECT on the connection's
       reader as soon as its header is read and report it when amqtt asks how the client left.
    3. QoS 1 delivery to a persistent session that is leaving. amqtt keeps a session marked
       connected until its connection has been torn down, hands messages published in that
       window to the closing connection, and forgets them when their PUBACK wait is cancelled
       or times out. Mosquitto keeps them for the session and sends them on reconnect; a
       device that disconnects just as its region's announcement goes out would otherwise
       miss it. We requeue such a message: onto the session's newer connection if the client
       is back, else onto the session's offline queue (amqtt sends that on reconnect).
    """
    original_from_stream = MQTTFixedHeader.from_stream.__func__  # type: ignore[attr-defined]

    async def from_stream(cls: type[MQTTFixedHeader], reader: Any) -> MQTTFixedHeader | None:
        header = await original_from_stream(cls, reader)
        if header is None:
            return None
        size = header.bytes_length + header.remaining_length
        if size > max_packet_bytes:
            log.warning("dropping client: %d-byte packet > %d", size, max_packet_bytes)
            raise PacketTooLargeError(f"{size} > {max_packet_bytes}")
        if header.packet_type == DISCONNECT:
            setattr(reader, _CLEAN_DISCONNECT, True)
        return header

    original_wait = BrokerProtocolHandler.wait_disconnect

    async def wait_disconnect(self: BrokerProtocolHandler) -> DisconnectPacket | None:
        result = await original_wait(self)
        if result is None and getattr(self.reader, _CLEAN_DISCONNECT, False):
            return DisconnectPacket()
        return result

    original_stop = BrokerProtocolHandler.stop

    async def stop(self: BrokerProtocolHandler) -> None:
        setattr(self, _STOPPING, True)
        await original_stop(self)

    original_publish = BrokerProtocolHandler.mqtt_publish

    async def mqtt_publish(
        self: BrokerProtocolHandler,
        topic: str,
        data: bytes | bytearray,
        qos: int | None,
        retain: bool,
        ack_timeout: int | None = None,
    ) -> Any:
        session = self.session
        keep = qos not in (None, QOS_0) and session is not None and not session.clean_session
        if keep and getattr(self, _STOPPING, False):
            _requeue(session, topic, data, qos)
            return None
        try:
            return await original_publish(self, topic, data, qos, retain, ack_timeout)
        except (asyncio.CancelledError, Exception):
            if not keep:
                raise
            _requeue(session, topic, data, qos)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the broker is shutting down, not just this connection
            return None

    MQTTFixedHeader.from_stream = classmethod(from_stream)  # type: ignore[method-assign,assignment]
    BrokerProtocolHandler.wait_disconnect = wait_disconnect  # type: ignore[method-assign]
    BrokerProtocolHandler.stop = stop  # type: ignore[method-assign]
    BrokerProtocolHandler.mqtt_publish = mqtt_publish  # type: ignore[method-assign]


def _requeue(session: Session, topic: str, data: bytes | bytearray, qos: int | None) -> None:
    """Deliver an unacknowledged message again: now if the client is connected on a live
    connection, else when it next connects."""
    handler = _broker._get_handler(session) if _broker is not None else None
    if (
        handler is not None
        and handler.session is session
        and session.transitions.is_connected()
        and not getattr(handler, _STOPPING, False)
    ):
        task = asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False))
        _resends.add(task)
        task.add_done_callback(_resends.discard)
        return
    session.retained_messages.put_nowait(RetainedApplicationMessage(None, topic, data, qos))


class OpenAuthPlugin(BaseAuthPlugin):
    """Let every client in, like Mosquitto's ``allow_anonymous true``.

    amqtt's own ``AnonymousAuthPlugin`` marks sessions anonymous, and amqtt then neither keeps
    persistent (``clean_session=False``) sessions after a disconnect nor queues QoS 1 messages
    for them while they are offline; Mosquitto does both. Devices rely on that queueing across
    short network drops, so we accept clients without the anonymous mark.
    """

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Session) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt 0.12 broker config: one TCP listener, open auth, nothing else."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        # Listing plugins explicitly replaces amqtt's defaults (event/packet loggers and the
        # $SYS publisher, which would put extra retained traffic on the broker).
        # Loaded by dotted path: under ``python -m`` this module is also ``__main__``.
        "plugins": {"fedsa_common.net.embedded_broker.OpenAuthPlugin": {}},
    }


async def serve(host: str, port: int) -> None:
    """Run the broker until SIGTERM/SIGINT or until the parent process exits."""
    global _broker
    broker = Broker(broker_config(host, port))
    _broker = broker
    await broker.start()
    log.info("embedded broker listening on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("parent process %d exited; shutting down", parent)
        stop.set()

    watcher = asyncio.create_task(watch_parent())
    await stop.wait()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    try:
        # amqtt's shutdown sometimes sits out its 5 s broadcast-loop timeout; nothing is
        # persisted, so a bounded wait is enough and keeps broker restarts quick.
        await asyncio.wait_for(broker.shutdown(), timeout=SHUTDOWN_GRACE_S)
    except TimeoutError:
        log.warning("amqtt shutdown took over %.1fs; exiting anyway", SHUTDOWN_GRACE_S)
    log.info("embedded broker stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--max-packet-bytes", type=int, default=4_000_000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"--host must be a loopback address, got {args.host}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("fedsa.embedded_broker").setLevel(logging.INFO)
    install_packet_hooks(args.max_packet_bytes)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
