#!/usr/bin/env python3
"""Gateway memory after load (the hardening issue): plays N players whose track carries 1 MB of
userData on a running node, deletes them, and prints the gateway's RSS at each step and after the
node has had time to hand freed memory back (it trims on its heartbeat).

    resolver/venv/bin/python scripts/gateway-memory.py --node http://127.0.0.1:2333 --pid $(pgrep -x caldera)

Serves its own 2 s WAV from a loopback HTTP server. Uses `websockets` from the resolver's
environment. Figures go to BENCHMARKS.md.
"""

import argparse
import asyncio
import http.server
import io
import json
import math
import struct
import threading
import urllib.request
import wave

import websockets


def wav_bytes(seconds=2.0, rate=48000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(struct.pack("<hh", v, v) for v in (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))))
        w.writeframes(frames)
    return buf.getvalue()


def serve_media():
    body = wav_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/tone.wav"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--node", default="http://127.0.0.1:2333")
    p.add_argument("--password", default="youshallnotpass")
    p.add_argument("--pid", type=int, required=True, help="the gateway's pid")
    p.add_argument("--players", type=int, default=150)
    p.add_argument("--settle", type=int, default=15, help="seconds to wait after deleting")
    args = p.parse_args()
    media = serve_media()

    def rest(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(args.node + path, data=data, method=method,
                                     headers={"Authorization": args.password, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    ws_url = args.node.replace("http", "ws", 1) + "/v4/websocket"
    async with websockets.connect(ws_url, additional_headers={"Authorization": args.password, "User-Id": "1"}, max_size=None) as ws:
        session = json.loads(await ws.recv())["sessionId"]

        async def drain():
            try:
                async for _ in ws:
                    pass
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(drain())
        print(f"baseline: {rss_mib(args.pid)} MiB")
        blob = "x" * (1 << 20)
        for g in range(args.players):
            await asyncio.to_thread(rest, "PATCH", f"/v4/sessions/{session}/players/{1000 + g}", {"track": {"identifier": media, "userData": {"blob": blob}}})
        print(f"{args.players} players with 1 MB userData: {rss_mib(args.pid)} MiB")
        for g in range(args.players):
            await asyncio.to_thread(rest, "DELETE", f"/v4/sessions/{session}/players/{1000 + g}")
        print(f"all deleted: {rss_mib(args.pid)} MiB")
        await asyncio.sleep(args.settle)
        print(f"{args.settle} s later: {rss_mib(args.pid)} MiB")
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main())
