"""Slow and stalled clients against a server, beside a normal one (the serving stack's tests and the
image tests): 64 clients sending their request heads a byte a second and 8 whose bodies stall, each
connecting again whenever the server closes it."""
from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Callable

SLOW_HEADER_CLIENTS = 64
STALLED_BODY_CLIENTS = 8
HEAD = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n")


def slow_headers(port: int, stop: threading.Event) -> None:
    """Sends a request head one byte a second; connects again when the server closes the connection."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                for byte in HEAD:
                    conn.sendall(bytes([byte]))
                    if stop.wait(1.0):
                        return
        except OSError:
            stop.wait(0.2)


def stalled_body(port: int, stop: threading.Event) -> None:
    """Sends a whole head and 1,000 of the 100,000 bytes it declares, then nothing; again when closed."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(HEAD + b"\xff\xd8" + b"\0" * 1000)
                while not stop.is_set():
                    try:
                        if conn.recv(1024) == b"":
                            break  # closed by the server
                    except TimeoutError:
                        continue
        except OSError:
            stop.wait(0.2)


def ping(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status
    finally:
        conn.close()


def answered_beside_slow_clients(port: int, invoke: Callable[[], int],
                                 rounds: int = 8) -> list[tuple[int, float, int, float]]:
    """With the slow clients at work, asks /ping and invoke() (which returns a status) rounds times,
    1.5 s apart (about 20 s: the slow clients are closed and come back meanwhile). Returns
    [(ping status, seconds, invoke status, seconds)]."""
    stop = threading.Event()
    threads = [threading.Thread(target=slow_headers, args=(port, stop), daemon=True)
               for _ in range(SLOW_HEADER_CLIENTS)]
    threads += [threading.Thread(target=stalled_body, args=(port, stop), daemon=True)
                for _ in range(STALLED_BODY_CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)  # every slow client is connected and sending
        results = []
        for _ in range(rounds):
            start = time.monotonic()
            pinged = ping(port)
            middle = time.monotonic()
            invoked = invoke()
            results.append((pinged, middle - start, invoked, time.monotonic() - middle))
            time.sleep(1.5)
        return results
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
