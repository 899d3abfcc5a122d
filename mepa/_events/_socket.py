"""The unix-socket transport: worker processes on this machine to the hub.

:class:`UnixSocketChannel` is what a context pickled for a process worker carries; the hub's
:class:`_UnixServer` listens on a socket in a private (0700) run directory::

    worker: BatchSender ─ Client(address, authkey) ─► hub.sock
    host:   accept thread ─► handshake thread (authkey, SO_RCVTIMEO) ─► reader thread
            (stop() waits for handshakes whose client already proved the authkey)
            reader thread ─ recv_bytes ─► hub.deliver_bytes(bounded=True)
                                          (blocks while the hub's queue is full: the
                                           workers' sends block in turn)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
import weakref
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Pipe,
    answer_challenge,
    deliver_challenge,
    wait,
)
from typing import TYPE_CHECKING

from ._sender import Channel, Transport

if TYPE_CHECKING:

    from .._rundir import RunDir
    from ._hub import EventHub

__all__ = [
    "HANDSHAKE_SECONDS",
    "UnixSocketChannel",
]

logger = logging.getLogger("mepa.events")

class UnixSocketChannel(Channel):
    """Channel to a hub's AF_UNIX listener, for worker processes on the same machine.

    Built by :meth:`EventHub.process_channel`; the socket lives in a private (0700) temporary
    directory and connections must prove they know the random ``authkey``.

    Parameters
    ----------
    hub_id
        The hub's id.
    address
        Path of the listening socket.
    authkey
        Shared secret of the ``multiprocessing.connection`` handshake.
    """

    def __init__(self, hub_id: str, address: str, authkey: bytes) -> None:
        super().__init__(hub_id)
        self.address = address
        self.authkey = authkey

    def __repr__(self) -> str:
        return f"UnixSocketChannel(hub_id={self.hub_id!r}, address={self.address!r})"

    def connect(self) -> Transport:
        """Connect to the hub's listener.

        Returns
        -------
        Transport
            A ``multiprocessing.connection.Connection``.
        """
        conn: Connection = Client(self.address, family="AF_UNIX", authkey=self.authkey)
        return conn


HANDSHAKE_SECONDS = 10.0
"""A client of the event socket that has not completed the authkey handshake by then is dropped."""


class _UnixServer:
    """The hub's AF_UNIX listener, its accept thread and its reader thread.

    The acceptor only accepts: each connection proves it knows the authkey in a thread of its
    own, whose reads time out after :data:`HANDSHAKE_SECONDS` (``SO_RCVTIMEO``), so a local
    client that connects and stays silent delays nobody and holds a thread only that long.
    """

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        from .._rundir import RunDir

        # Mode 0700, removed at stop() or exit, or by the next mepa host if this one is killed.
        rundir = RunDir("events", short=True)
        self._dir = rundir.path
        address = os.path.join(self._dir, "hub.sock")
        self._authkey = os.urandom(32)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(address)
            self._socket.listen(128)
        except OSError:
            self._socket.close()
            rundir.close()
            raise
        # Called by stop(), or at interpreter exit if the hub was never closed.
        self._remove = weakref.finalize(self, _remove_listener, self._socket, rundir)
        self.channel = UnixSocketChannel(hub.hub_id, address, self._authkey)
        self._stopping = False  # the acceptor exits
        self._draining = False  # the reader reads what is left and exits
        self._new: list[Connection] = []
        self._new_lock = threading.Lock()
        # Handshakes whose client proved it knows the authkey but that have not handed their
        # connection to the reader yet: that client may have sent its events already.
        self._verified = 0
        self._verified_done = threading.Condition(self._new_lock)
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._name = hub.hub_id[:8]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"mepa-accept-{self._name}", daemon=True
        )
        self._reader = threading.Thread(
            target=self._read_loop, name=f"mepa-reader-{self._name}", daemon=True
        )
        self._acceptor.start()
        self._reader.start()

    @property
    def directory(self) -> str:
        return self._dir

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._socket.accept()
            except OSError as exc:
                if self._stopping:
                    return
                logger.warning("cannot accept a connection to the event hub: %s", exc)
                time.sleep(0.1)  # e.g. EMFILE: do not spin
                continue
            if self._stopping:
                sock.close()
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(HANDSHAKE_SECONDS))
            conn = Connection(sock.detach())
            threading.Thread(
                target=self._handshake, args=(conn,), name=f"mepa-handshake-{self._name}",
                daemon=True,
            ).start()

    def _handshake(self, conn: Connection) -> None:
        try:
            deliver_challenge(conn, self._authkey)
        except (OSError, EOFError, AuthenticationError) as exc:
            self._refuse(conn, exc)
            return
        with self._new_lock:
            self._verified += 1
        try:
            self._finish_handshake(conn)
        finally:
            with self._new_lock:
                self._verified -= 1
                self._verified_done.notify_all()

    def _refuse(self, conn: Connection, exc: BaseException) -> None:
        conn.close()
        if not self._stopping:
            logger.warning("refused a connection to the event hub: %s", exc)

    def _finish_handshake(self, conn: Connection) -> None:
        try:
            answer_challenge(conn, self._authkey)
            with socket.socket(fileno=conn.fileno()) as sock:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0.0))
                finally:
                    sock.detach()  # the connection keeps the descriptor
        except (OSError, EOFError, AuthenticationError) as exc:
            self._refuse(conn, exc)
            return
        with self._new_lock:
            accepted = not self._draining
            if accepted:
                self._new.append(conn)  # stop() closes it if the reader is gone by then
        if not accepted:
            conn.close()  # the hub stopped meanwhile
            return
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def _read_loop(self) -> None:
        conns: list[Connection] = []
        deliver = self._hub.deliver_bytes
        while not self._draining:
            for conn in wait([self._wake_r, *conns]):
                if conn is self._wake_r:
                    self._wake_r.recv_bytes()
                    with self._new_lock:
                        conns.extend(self._new)
                        self._new.clear()
                    continue
                assert isinstance(conn, Connection)
                try:
                    deliver(conn.recv_bytes(), bounded=True)
                except (EOFError, OSError):
                    conns.remove(conn)
                    conn.close()
                except Exception:
                    logger.exception("bad message on the event channel")
        # The acceptor is gone: read what is already in the sockets, then stop.
        with self._new_lock:
            conns.extend(self._new)
            self._new.clear()
        while conns:
            ready = wait(conns, timeout=0)
            if not ready:
                break
            for conn in ready:
                assert isinstance(conn, Connection)
                try:
                    deliver(conn.recv_bytes())
                except (EOFError, OSError):
                    conns.remove(conn)
        for conn in conns:
            conn.close()

    def stop(self, timeout: float | None) -> None:
        bounded = 5.0 if timeout is None else timeout
        self._stopping = True
        # Wake the acceptor with a bare connection.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(self.channel.address)
        self._acceptor.join(bounded)
        # A client whose side of the handshake is over may have sent events already: let its
        # handshake hand the connection to the reader before the reader drains and stops.
        with self._verified_done:
            self._verified_done.wait_for(lambda: self._verified == 0, bounded)
        self._draining = True
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")
        self._reader.join(timeout)
        with self._new_lock:
            late, self._new = self._new, []
        for conn in late:
            conn.close()
        self._remove()
        self._wake_r.close()
        self._wake_w.close()


def _timeval(seconds: float) -> bytes:
    """``struct timeval`` for ``SO_RCVTIMEO`` (0: no timeout)."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _remove_listener(listener: socket.socket, rundir: RunDir) -> None:
    listener.close()
    rundir.close()  # and the socket file in it
