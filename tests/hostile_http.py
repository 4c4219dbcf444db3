"""A loopback HTTP server whose answers are scripted bytes: for the responses a real server should
never send (broken framing, lies about lengths and ranges, silence, endless bodies)."""
import socket
import struct
import threading
import time


class Request:
    def __init__(self, raw: bytes):
        lines = raw.decode("latin-1").split("\r\n")
        self.path = lines[0].split(" ")[1]
        pairs = (line.partition(":") for line in lines[1:] if line)
        self.headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        self.range = self.headers.get("range")


class ScriptedServer:
    """Each connection reads one request, records its Range header and runs `script(request,
    connection, server)`; the connection closes when the script returns."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = None
        self.files: dict[str, bytes] = {}
        self.requests: list[str | None] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        with connection:
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                raw += chunk
            request = Request(raw.split(b"\r\n\r\n")[0])
            self.requests.append(request.range)
            try:
                self.script(request, connection, self)
            except OSError:
                pass  # the client hung up, as it should on an endless or stalled answer

    def silence(self):
        """Keeps the connection open and says nothing (until the test ends)."""
        self.stopped.wait(30)

    def close(self):
        self.stopped.set()
        self.listener.close()


def reply(connection, status, headers=(), body=b""):
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    connection.sendall(head.encode("latin-1") + body)


def chunked(*pieces):
    """The chunked encoding of `pieces`, without the closing empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


def serve(data):
    """A correct server of `data`, with ranges."""
    def script(request, connection, server):
        start = int(request.range.split("=")[1].rstrip("-")) if request.range else 0
        if request.range and start >= len(data):
            reply(connection, "416 Range Not Satisfiable", [("Content-Range", f"bytes */{len(data)}")])
        elif request.range:
            reply(connection, "206 Partial Content", [
                ("Content-Length", len(data) - start), ("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")],
                data[start:])
        else:
            reply(connection, "200 OK", [("Content-Length", len(data))], data)
    return script


def slowly(script_data, pause=0.02, piece=4096):
    """Sends `script_data` (head and body) in pieces, so a download takes a while."""
    def script(request, connection, server):
        for at in range(0, len(script_data), piece):
            connection.sendall(script_data[at:at + piece])
            time.sleep(pause)
    return script


def endless(first):
    """`first`, then zeros until the client hangs up."""
    def script(request, connection, server):
        connection.sendall(first)
        while not server.stopped.is_set():
            connection.sendall(b"\0" * 65536)
    return script


def reset_after(head_and_body):
    """Sends, then resets the connection (RST) instead of closing it."""
    def script(request, connection, server):
        connection.sendall(head_and_body)
        time.sleep(0.3)  # the client reads what was sent before the reset discards it
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return script


def closed_port():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]
