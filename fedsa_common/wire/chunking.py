"""Split payloads into broker-sized frames and put them back together.

Brokers cap the size of one MQTT packet (Mosquitto 2.1 defaults to 2,000,000 bytes), but model
updates are larger, so every logical message travels as one or more frames. Each frame carries a
fixed 24-byte header so that a receiver can reassemble frames that arrive out of order,
duplicated (QoS 1 redelivery, retained replays) or interleaved with other messages.

Frame layout (big-endian)::

    magic    4 bytes   b"FSC\\x01"
    msg_id  16 bytes   random per logical message
    idx      u16       0-based frame index
    total    u16       number of frames of this message (>= 1)
    data     rest      the idx-th slice of the payload

All frames but the last carry exactly the same number of data bytes; the receiver relies on that
to bound memory before the whole message is there. Everything here is pure: no I/O, no clock
(callers pass ``now``), so the hostile-input rules can be tested exhaustively.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fedsa_common.wire.errors import WireError

FRAME_MAGIC = b"FSC\x01"
MSG_ID_BYTES = 16
_HEADER = struct.Struct(">4s16sHH")
FRAME_HEADER_BYTES = _HEADER.size  # 24
MAX_FRAMES = 0xFFFF
#: Smallest data slice a non-final frame may carry. It bounds how many frames (dict entries) one
#: message can be split into, so a hostile sender cannot make us store 65,535 one-byte frames.
MIN_CHUNK_BYTES = 256
#: How many finished or superseded message ids are remembered to drop late duplicates.
_RETIRED_IDS = 4096
#: Incomplete messages kept per key; two lets a new message finish while stale frames of the
#: previous one (e.g. a half-replaced retained message) are still arriving.
_PARTIALS_PER_KEY = 2
#: Default bound on the data bytes of all incomplete messages together (at least two
#: largest messages).  Without it 64 partials of 16 MB could hold 1 GiB.
DEFAULT_BUFFERED_BYTES = 256 * 2**20


def split_payload(payload: bytes, limit: int, msg_id: bytes | None = None) -> list[bytes]:
    """Cut ``payload`` into frames of at most ``limit`` bytes each, header included.

    A payload that fits (``len(payload) <= limit - 24``) yields exactly one frame; an empty
    payload yields one header-only frame. ``msg_id`` is random when not given; pass one only to
    make tests deterministic.
    """
    if limit < FRAME_HEADER_BYTES + MIN_CHUNK_BYTES:
        raise ValueError(
            f"limit {limit} too small: need at least {FRAME_HEADER_BYTES + MIN_CHUNK_BYTES} bytes"
        )
    if msg_id is None:
        msg_id = os.urandom(MSG_ID_BYTES)
    elif len(msg_id) != MSG_ID_BYTES:
        raise ValueError(f"msg_id must be {MSG_ID_BYTES} bytes, got {len(msg_id)}")
    chunk = limit - FRAME_HEADER_BYTES
    total = max(1, -(-len(payload) // chunk))
    if total > MAX_FRAMES:
        raise ValueError(f"payload of {len(payload)} bytes needs {total} frames (max {MAX_FRAMES})")
    view = memoryview(payload)
    return [
        _HEADER.pack(FRAME_MAGIC, msg_id, idx, total) + view[idx * chunk : (idx + 1) * chunk]
        for idx in range(total)
    ]


@dataclass(frozen=True)
class FrameHeader:
    """The parsed fixed part of one frame."""

    msg_id: bytes
    idx: int
    total: int


def parse_header(frame: bytes) -> FrameHeader:
    """Read and check the 24-byte header; raise ``WireError`` when ``frame`` is not a frame."""
    if len(frame) < FRAME_HEADER_BYTES:
        raise WireError("frame_truncated", f"{len(frame)} bytes < {FRAME_HEADER_BYTES}-byte header")
    magic, msg_id, idx, total = _HEADER.unpack_from(frame)
    if magic != FRAME_MAGIC:
        raise WireError("frame_bad_magic", repr(bytes(magic)))
    if total == 0:
        raise WireError("frame_bad_total", "total is 0")
    if idx >= total:
        raise WireError("frame_bad_index", f"idx {idx} >= total {total}")
    return FrameHeader(bytes(msg_id), idx, total)


def parse_frame(frame: bytes) -> tuple[FrameHeader, bytes]:
    """Split one frame into header and data; raise ``WireError`` when it is not a frame."""
    return parse_header(frame), bytes(frame[FRAME_HEADER_BYTES:])


@dataclass
class _Partial:
    """Frames received so far for one (key, msg_id)."""

    total: int
    last_seen: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    chunk_len: int | None = None  # data size of every non-final frame, once one was seen
    nbytes: int = 0
    started: int = 0  # order in which the reassembler first saw this message


class Reassembler:
    """Collects frames per logical topic (``key``) until a message is whole.

    Memory is bounded per key (at most two incomplete messages, each at most
    ``max_message_bytes``) and overall (at most ``max_pending`` incomplete messages holding
    at most ``max_buffered_bytes`` data bytes), and partials idle for longer than ``ttl_s``
    are dropped.  A key is one sender: under the provisioned broker ACL only one account may
    publish on a topic.  When an overall bound is exceeded, the key that holds the most
    bytes (then the most messages) loses its least recently fed message, so a sender that
    floods evicts its own messages before an honest sender's one in progress; evicting the
    least recently fed message overall would evict the honest, slower one first.  (Without
    the ACL one party can publish on many topics; many small holdings can then still
    displace a larger honest one.)
    One logical message per key at a time: when a message completes,
    every other incomplete message on that key is dropped (it is older, or would arrive out of
    order), and a third message id on a key evicts the least recently fed of the two partials
    kept there. Two rather than one, so that a new message still completes while stale frames
    of the previous one arrive interleaved (a half-replaced retained message). Frames of
    messages already delivered, superseded or evicted are ignored, so QoS 1 duplicates and
    retained replays do not deliver a message twice.

    Not thread-safe: one instance belongs to one network thread.
    """

    def __init__(
        self, *, max_message_bytes: int = 8_000_000, max_pending: int = 64, ttl_s: float = 120.0,
        max_buffered_bytes: int | None = None,
    ) -> None:
        if max_message_bytes < 0 or max_pending < 1 or ttl_s <= 0:
            raise ValueError("max_message_bytes >= 0, max_pending >= 1 and ttl_s > 0 required")
        if max_buffered_bytes is None:
            max_buffered_bytes = max(DEFAULT_BUFFERED_BYTES, 2 * max_message_bytes)
        if max_buffered_bytes < max_message_bytes:
            raise ValueError("max_buffered_bytes must be >= max_message_bytes")
        self.max_message_bytes = max_message_bytes
        self.max_pending = max_pending
        self.max_buffered_bytes = max_buffered_bytes
        self.ttl_s = ttl_s
        # (key, msg_id) -> partial, least recently fed first
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._retired: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._started = 0

    def forget(self, matches: Callable[[str], bool]) -> None:
        """Drop what is held and remembered for the keys ``matches`` accepts, so a message
        seen before on them is delivered again (a new subscription's retained replay)."""
        for ident in [i for i in self._partials if matches(i[0])]:
            del self._partials[ident]
        for ident in [i for i in self._retired if matches(i[0])]:
            del self._retired[ident]

    @property
    def pending(self) -> int:
        """Number of incomplete messages currently held."""
        return len(self._partials)

    @property
    def buffered_bytes(self) -> int:
        """Data bytes currently held in incomplete messages."""
        return sum(p.nbytes for p in self._partials.values())

    def add(self, key: str, frame: bytes, now: float) -> bytes | None:
        """Feed one frame; return the whole payload when this frame completes its message.

        Raises ``WireError`` for frames that are malformed or inconsistent with frames already
        held for the same message (that message is then dropped, since it cannot be trusted).
        """
        self._expire(now)
        header, data = parse_frame(frame)
        ident = (key, header.msg_id)
        if ident in self._retired:
            return None
        self._check_plausible(header, len(data))
        if header.total == 1:
            self._supersede(key)
            self._retire(ident)
            return data

        partial = self._partials.get(ident)
        if partial is None:
            partial = self._new_partial(key, header.total, now)
            self._partials[ident] = partial
        try:
            self._store(partial, header, data)
        except WireError:
            del self._partials[ident]
            self._retire(ident)
            raise
        partial.last_seen = now
        self._partials.move_to_end(ident)
        if len(partial.chunks) < partial.total:
            self._enforce_bounds()
            return None
        del self._partials[ident]
        self._retire(ident)
        self._supersede(key)
        return b"".join(partial.chunks[i] for i in range(partial.total))

    def _check_plausible(self, header: FrameHeader, data_len: int) -> None:
        """Reject frames whose declared shape cannot belong to an acceptable message."""
        if header.total == 1:
            if data_len > self.max_message_bytes:
                raise WireError("message_too_large", f"{data_len} bytes > {self.max_message_bytes}")
            return
        max_frames = self.max_message_bytes // MIN_CHUNK_BYTES + 1
        if header.total > max_frames:
            raise WireError(
                "frame_total_implausible",
                f"total {header.total} frames > {max_frames} for {self.max_message_bytes} bytes",
            )
        is_last = header.idx == header.total - 1
        if not is_last and data_len < MIN_CHUNK_BYTES:
            raise WireError("frame_too_small", f"non-final frame with {data_len} data bytes")
        if is_last and data_len == 0:
            raise WireError("frame_too_small", "empty final frame of a multi-frame message")
        if is_last:
            smallest = (header.total - 1) * MIN_CHUNK_BYTES + data_len
        else:
            smallest = (header.total - 1) * data_len + 1
        if smallest > self.max_message_bytes:
            raise WireError(
                "message_too_large",
                f"{header.total} frames imply >= {smallest} bytes > {self.max_message_bytes}",
            )

    def _new_partial(self, key: str, total: int, now: float) -> _Partial:
        same_key = [ident for ident in self._partials if ident[0] == key]
        while len(same_key) >= _PARTIALS_PER_KEY:
            self._drop(same_key.pop(0))  # least recently fed on this key
        self._started += 1
        return _Partial(total=total, last_seen=now, started=self._started)

    def _enforce_bounds(self) -> None:
        """Evict until the overall bounds hold again, from the largest holder first.

        The victim key holds the most bytes, then the most messages; among equals, the one
        that started a message most recently (a flood keeps starting new ones, an honest
        message in progress started before them).  It loses its least recently fed message.
        The partial just fed may be the victim: then its sender holds the most and its
        frame is dropped."""
        buffered = self.buffered_bytes
        while len(self._partials) > self.max_pending or buffered > self.max_buffered_bytes:
            held: dict[str, list[int]] = {}  # key -> [bytes, messages, newest start]
            for (key, _), partial in self._partials.items():
                entry = held.setdefault(key, [0, 0, 0])
                entry[0] += partial.nbytes
                entry[1] += 1
                entry[2] = max(entry[2], partial.started)
            victim = max(held, key=lambda k: tuple(held[k]))
            ident = next(i for i in self._partials if i[0] == victim)  # least recently fed
            buffered -= self._partials[ident].nbytes
            self._drop(ident)

    def _store(self, partial: _Partial, header: FrameHeader, data: bytes) -> None:
        if header.total != partial.total:
            raise WireError(
                "frame_inconsistent_total", f"total {header.total} != earlier {partial.total}"
            )
        known = partial.chunks.get(header.idx)
        if known is not None:
            if known != data:
                raise WireError("frame_conflicting_duplicate", f"idx {header.idx} differs")
            return
        last_idx = partial.total - 1
        if header.idx != last_idx:
            if partial.chunk_len is None:
                partial.chunk_len = len(data)
            elif len(data) != partial.chunk_len:
                raise WireError(
                    "frame_inconsistent_size", f"{len(data)} bytes != {partial.chunk_len}"
                )
            last = partial.chunks.get(last_idx)
            last_len = None if last is None else len(last)
        else:
            last_len = len(data)
        if partial.chunk_len is not None:
            if last_len is not None and last_len > partial.chunk_len:
                raise WireError("frame_inconsistent_size", "final frame larger than the others")
            smallest = last_idx * partial.chunk_len + (last_len or 1)
            if smallest > self.max_message_bytes:
                raise WireError(
                    "message_too_large", f">= {smallest} bytes > {self.max_message_bytes}"
                )
        partial.chunks[header.idx] = data
        partial.nbytes += len(data)

    def _supersede(self, key: str) -> None:
        """Drop the other incomplete messages on ``key``: one was just delivered.

        Whatever is still partial is either older (stale retained frames, or a message the
        publisher gave up on) or would be delivered out of order, so it must not complete later.
        """
        for ident in [i for i in self._partials if i[0] == key]:
            self._drop(ident)

    def _expire(self, now: float) -> None:
        for ident in [i for i, p in self._partials.items() if now - p.last_seen > self.ttl_s]:
            self._drop(ident)

    def _drop(self, ident: tuple[str, bytes]) -> None:
        del self._partials[ident]
        self._retire(ident)

    def _retire(self, ident: tuple[str, bytes]) -> None:
        self._retired[ident] = None
        self._retired.move_to_end(ident)
        while len(self._retired) > _RETIRED_IDS:
            self._retired.popitem(last=False)
