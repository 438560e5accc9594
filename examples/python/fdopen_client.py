#!/usr/bin/env python3
"""A complete fdopen client on Python's standard library alone.

    python3 fdopen_client.py --socket ./fdopen.sock open /abs/path [--mode read]
    echo hi | python3 fdopen_client.py --socket ./fdopen.sock open /abs/new --mode write --create [--perm 0640]
    python3 fdopen_client.py --socket ./fdopen.sock check /abs/path
    python3 fdopen_client.py --socket ./fdopen.sock bind tcp:127.0.0.1:80   # serves one hello
    python3 fdopen_client.py --socket ./fdopen.sock stat /abs/path [--nofollow]   # JSON
    python3 fdopen_client.py --socket ./fdopen.sock ls /abs/dir        # one name a line
    python3 fdopen_client.py --socket ./fdopen.sock readlink|mkdir|rm|rmdir /abs/path
    python3 fdopen_client.py --socket ./fdopen.sock mv /abs/old /abs/new [--no-replace]

As a library:

    with FdopenClient("./fdopen.sock") as client:
        with client.open("/var/log/app/today.log") as f:
            print(f.read())
        print(client.stat("/var/log/app")["mode"])
        for entry in client.scandir("/var/log/app"):
            print(entry["name"], entry["type"])

Paths go as str or bytes; names and paths come back as str, with bytes
that are not UTF-8 kept as os.fsdecode keeps them (surrogate escapes), so
os.fsencode gives the exact bytes back (the _b64 twins of fdopen-protocol(7)).

Responses can arrive several to one recvmsg, so received descriptors wait in
a FIFO and each response with "fd": true takes the oldest (FRAMING in
fdopen-protocol(7)).
"""
import argparse
import base64
import collections
import errno
import json
import os
import socket
import sys


class FdopenError(Exception):
    """The server refused: `code` is one of the ERRORS of fdopen-protocol(7);
    `errno_name` the kernel's error where one decided it ("ENOENT"), and
    `errno` its number here (None without one)."""

    def __init__(self, code, message, errno_name=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errno_name = errno_name
        self.errno = getattr(errno, errno_name, None) if errno_name else None

    @classmethod
    def from_response(cls, response):
        error = response.get("error") or {}
        return cls(error.get("code", "unknown"), error.get("message", ""), error.get("errno"))


def put_path(request, key, path):
    """request[key], or request[key + "_b64"] for bytes that are not UTF-8."""
    raw = os.fsencode(path)
    try:
        request[key] = raw.decode("utf-8")
    except UnicodeDecodeError:
        request[key + "_b64"] = base64.b64encode(raw).decode()


def exact(response, key):
    """The exact text of response[key]: its _b64 twin wins over the lossy text."""
    if key + "_b64" in response:
        return os.fsdecode(base64.b64decode(response[key + "_b64"]))
    return response[key]


def within_field(within):
    """within = (dir_path, st_dev, st_ino): a directory the caller holds
    (fdopen-protocol(7), REQUESTS)."""
    path, dev, ino = within
    field = {"id": [dev, ino]}
    put_path(field, "path", path)
    return field


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

    def request(self, op, path=None, mode=None, create=False, perm=None, truncate=False,
                nofollow=False, within=None, **fields):
        """Sends one request and returns (response, fd or None).

        create: False, True or "exclusive"; perm: octal string such as
        "0640" for a created file; truncate: bool; nofollow: refuse a
        final symlink; within: (dir_path, st_dev, st_ino). Paths (also "to"
        and an xattr "name" among fields) that are not UTF-8 travel as _b64."""
        req = {"op": op}
        if path is not None:
            put_path(req, "path", path)
        for key in ("to", "name"):
            if fields.get(key) is not None:
                put_path(req, key, fields.pop(key))
        req.update({k: v for k, v in fields.items() if v is not None})
        if mode is not None:
            req["mode"] = mode
        if create:
            req["create"] = create
        if perm is not None:
            req["perm"] = perm
        if truncate:
            req["truncate"] = True
        if nofollow:
            req["nofollow"] = True
        if within is not None:
            req["within"] = within_field(within)
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        return self.receive()

    def ask(self, op, path, **fields):
        """A request whose answer carries no descriptor; the answer, or
        FdopenError."""
        response, fd = self.request(op, path, **fields)
        if fd is not None:
            os.close(fd)
        if not response["ok"]:
            raise FdopenError.from_response(response)
        return response

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

    def open(self, path, mode="read", create=False, perm=None, truncate=False, nofollow=False,
             within=None):
        """Returns a Python file object for the granted descriptor."""
        response, fd = self.request("open", path, mode, create, perm, truncate, nofollow, within)
        if not response["ok"]:
            raise FdopenError.from_response(response)
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
            raise FdopenError.from_response(response)
        return socket.socket(fileno=fd), response["address"]

    def check(self, path, mode="read", create=False, perm=None, truncate=False, nofollow=False,
              within=None):
        return self.ask("check", path, mode=mode, create=create, perm=perm, truncate=truncate,
                        nofollow=nofollow, within=within)

    # Tree operations (fdopen-protocol(7)).

    def stat(self, path, nofollow=False, within=None):
        """The stat dict of fdopen-protocol(7): dev, ino, mode (with the type
        bits), nlink, uid, gid, rdev, size, blksize, blocks, atime, mtime,
        ctime and, where known, btime, each time as [seconds, nanoseconds]."""
        return self.ask("stat", path, nofollow=nofollow, within=within)["stat"]

    def readlink(self, path, within=None):
        return exact(self.ask("readlink", path, within=within), "target")

    def listxattr(self, path, nofollow=False, within=None):
        response = self.ask("xattr", path, nofollow=nofollow, within=within)
        if "names_b64" in response:  # some name is not UTF-8: every name's bytes
            return [os.fsdecode(base64.b64decode(n)) for n in response["names_b64"]]
        return response["names"]

    def getxattr(self, path, name, nofollow=False, within=None):
        response = self.ask("xattr", path, name=name, nofollow=nofollow, within=within)
        return base64.b64decode(response["value_b64"])

    def scandir(self, path, within=None):
        """Every entry of the directory as {"name", "type", "ino"}, "." and
        ".." left out, page after page as the cursor leads."""
        cursor = None
        while True:
            response = self.ask("readdir", path, cursor=cursor, within=within)
            for entry in response["entries"]:
                name = exact(entry, "name")
                if name not in (".", ".."):
                    yield {"name": name, "type": entry.get("type", "unknown"),
                           "ino": entry.get("ino", 0)}
            cursor = response.get("cursor")
            if cursor is None:
                return

    def listdir(self, path, within=None):
        return [entry["name"] for entry in self.scandir(path, within)]

    def mkdir(self, path, perm=None, within=None):
        """perm: octal string such as "0750"; the rule's dir_perm masks it."""
        self.ask("mkdir", path, perm=perm, within=within)

    def unlink(self, path, within=None):
        self.ask("unlink", path, within=within)

    def rmdir(self, path, within=None):
        self.ask("rmdir", path, within=within)

    def rename(self, path, to, noreplace=False, within=None):
        self.ask("rename", path, to=to, noreplace=noreplace or None, within=within)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("FDOPEN_SOCKET"), required="FDOPEN_SOCKET" not in os.environ)
    parser.add_argument("command", choices=["open", "check", "hello", "bind", "stat", "readlink", "ls",
                                            "mkdir", "rm", "rmdir", "mv"])
    parser.add_argument("path", nargs="?")
    parser.add_argument("to", nargs="?", help="mv: the new name")
    parser.add_argument("--mode", default="read", choices=["read", "write", "readwrite", "append"])
    parser.add_argument("--create", nargs="?", const=True, default=False, choices=[True, "exclusive"],
                        help="let the server create the file (=exclusive: only create it)")
    parser.add_argument("--perm", help="octal permission bits for a created file or directory, e.g. 0640")
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--nofollow", action="store_true", help="stat, open, check: a final symlink itself")
    parser.add_argument("--no-replace", action="store_true", help="mv: never replace an existing name")
    args = parser.parse_args()
    options = dict(create=args.create, perm=args.perm, truncate=args.truncate, nofollow=args.nofollow)
    try:
        client = FdopenClient(args.socket)
    except OSError as e:
        print(f"fdopen_client: cannot connect to {args.socket}: {e}", file=sys.stderr)
        return 3
    out = sys.stdout.buffer
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
            elif args.command == "stat":
                print(json.dumps(client.stat(args.path, nofollow=args.nofollow)))
            elif args.command == "readlink":
                out.write(os.fsencode(client.readlink(args.path)) + b"\n")
            elif args.command == "ls":
                for name in sorted(os.fsencode(n) for n in client.listdir(args.path)):
                    out.write(name + b"\n")
            elif args.command == "mkdir":
                client.mkdir(args.path, perm=args.perm)
            elif args.command == "rm":
                client.unlink(args.path)
            elif args.command == "rmdir":
                client.rmdir(args.path)
            elif args.command == "mv":
                client.rename(args.path, args.to, noreplace=args.no_replace)
            elif args.mode == "read":
                with client.open(args.path, args.mode, **options) as f:
                    out.write(f.read())
            else:
                with client.open(args.path, args.mode, **options) as f:
                    f.write(sys.stdin.buffer.read())
        except FdopenError as e:
            print(f"fdopen_client: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
