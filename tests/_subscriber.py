"""A ZeroMQ subscriber on loopback for the tests: real sockets, parsed vlmedge messages."""

from __future__ import annotations

import zmq

from vlmedge import protocol


class Subscriber:
    def __init__(self, address, topics=(b"targets ", b"status ")):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(address)

    def recv(self, timeout=10.0):
        if self.sock.poll(int(timeout * 1000)):
            return protocol.parse_message(self.sock.recv())
        return None, None

    def close(self):
        self.sock.close(0)
        self.ctx.term()
