#!/usr/bin/env python3
"""A complete fdopen client on Python's standard library alone.

    python3 fdopen_client.py --socket ./fdopen.sock open /abs/path [--mode read]
    echo hi | python3 fdopen_client.py --socket ./fdopen.sock open /abs/new --mode write --create [--perm 0640]
    python3 fdopen_client.py --socket ./fdopen.sock check /abs/path
    python3 fdopen_client.py --socket ./fdopen.sock bind tcp:127.0.0.1:80   # serves one hello

As a library:

    with FdopenClient("./fdopen.sock") as client:
        with client.open("/var/log/app/today.log") as f:
            print(f.read())

Responses can arrive several to one recvmsg, so received descriptors wait in
a FIFO and each response with "fd": true takes the oldest (FRAMING in
fdopen-protocol(7)).
"""
import argparse
import base64
import collections
import json
import os
import socket
import sys


class FdopenError(Exception):
    """The server refused: `code` is one of the ERRORS of fdopen-protocol(7)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FdopenClient:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""
        self.fds = collections.deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()

    def request(self, op, path=None, mode=None, create=False, perm=None, truncate=False):
        """Sends one request and returns (response, fd or None).

        create: False, True or "exclusive"; perm: octal string such as
        "0640" for a created file; truncate: bool. A path given as bytes
        that is not UTF-8 travels as path_b64."""
        req = {"op": op}
        if isinstance(path, bytes):
            try:
                path = path.decode()
            except UnicodeDecodeError:
                req["path_b64"] = base64.b64encode(path).decode()
                path = None
        if path is not None:
            req["path"] = path
        if mode is not None:
            req["mode"] = mode
        if create:
            req["create"] = create
        if perm is not None:
            req["perm"] = perm
        if truncate:
            req["truncate"] = True
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        return self.receive()

    def receive(self):
        while b"\n" not in self.buffer:
            data, fds, flags, _ = socket.recv_fds(self.sock, 65536, 16)
            self.fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                raise OSError("descriptors truncated")
            if not data:
                raise ConnectionError("server closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        response = json.loads(line)
        fd = self.fds.popleft() if response.get("fd") else None
        return response, fd

    def open(self, path, mode="read", create=False, perm=None, truncate=False):
        """Returns a Python file object for the granted descriptor."""
        response, fd = self.request("open", path, mode, create, perm, truncate)
        if not response["ok"]:
            raise FdopenError(response["error"]["code"], response["error"]["message"])
        py_mode = {"read": "rb", "write": "wb", "readwrite": "r+b", "append": "ab"}[mode]
        return os.fdopen(fd, py_mode)

    def bind(self, address, reuseport=False):
        """A socket bound (and, for TCP, listening) on address, such as
        "tcp:*:443"; returns (socket.socket, bound address)."""
        req = {"op": "bind", "address": address}
        if reuseport:
            req["reuseport"] = True
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        response, fd = self.receive()
        if not response["ok"]:
            raise FdopenError(response["error"]["code"], response["error"]["message"])
        return socket.socket(fileno=fd), response["address"]

    def check(self, path, mode="read", create=False, perm=None, truncate=False):
        response, _ = self.request("check", path, mode, create, perm, truncate)
        if not response["ok"]:
            raise FdopenError(response["error"]["code"], response["error"]["message"])
        return response


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("FDOPEN_SOCKET"), required="FDOPEN_SOCKET" not in os.environ)
    parser.add_argument("command", choices=["open", "check", "hello", "bind"])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--mode", default="read", choices=["read", "write", "readwrite", "append"])
    parser.add_argument("--create", nargs="?", const=True, default=False, choices=[True, "exclusive"],
                        help="let the server create the file (=exclusive: only create it)")
    parser.add_argument("--perm", help="octal permission bits for a created file, e.g. 0640")
    parser.add_argument("--truncate", action="store_true")
    args = parser.parse_args()
    options = dict(create=args.create, perm=args.perm, truncate=args.truncate)
    try:
        client = FdopenClient(args.socket)
    except OSError as e:
        print(f"fdopen_client: cannot connect to {args.socket}: {e}", file=sys.stderr)
        return 3
    with client:
        try:
            if args.command == "hello":
                print(json.dumps(client.request("hello")[0]))
            elif args.command == "bind":
                # Serve one connection on the socket: say hello, close.
                listener, bound = client.bind(args.path)
                print(bound, flush=True)
                conn, _ = listener.accept()
                conn.sendall(b"hello from python\n")
                conn.close()
            elif args.command == "check":
                print(json.dumps(client.check(args.path, args.mode, **options)))
            elif args.mode == "read":
                with client.open(args.path, args.mode, **options) as f:
                    sys.stdout.buffer.write(f.read())
            else:
                with client.open(args.path, args.mode, **options) as f:
                    f.write(sys.stdin.buffer.read())
        except FdopenError as e:
            print(f"fdopen_client: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
