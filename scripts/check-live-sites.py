#!/usr/bin/env python3
"""Checks platform sources against the live sites, through a running node (needs internet; not
part of CI, which is offline). For one YouTube, one SoundCloud and one Bandcamp link and a
YouTube search it loads the identifier, plays the first track in a player of its own (no voice
channel: the track is resolved again and its media opened, as for a guild), and prints what came
back: load type, title, length, and whether it played 20 s without an exception.

    resolver/venv/bin/python scripts/check-live-sites.py [--node http://127.0.0.1:2333] [--password youshallnotpass] [IDENTIFIER...]

Identifiers given on the command line replace the built-in list.

Uses the resolver's environment for its one dependency (`websockets`). Exit status: the number
of identifiers that failed.
"""

import argparse
import asyncio
import json
import sys
import urllib.parse
import urllib.request

import websockets

CHECKS = [
    ("YouTube video", "https://www.youtube.com/watch?v=dQw4w9WgXcQ"),
    ("YouTube search", "ytsearch:never gonna give you up"),
    ("SoundCloud track", "https://soundcloud.com/forss/flickermood"),
    ("Bandcamp track", "https://youtube-dl.bandcamp.com/track/youtube-dl-test-song"),
]


def rest(node, password, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node + path, data=data, method=method,
                                 headers={"Authorization": password, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as res:
        text = res.read()
        return json.loads(text) if text else None


async def check(node, password, ws, session, guild, what, identifier):
    loaded = rest(node, password, "GET", "/v4/loadtracks?identifier=" + urllib.parse.quote(identifier))
    kind, data = loaded["loadType"], loaded.get("data")
    if kind == "error":
        print(f"FAIL {what}: load error: {data['message']} ({data.get('cause')})")
        return False
    tracks = {"track": [data], "search": data, "playlist": (data or {}).get("tracks")}.get(kind) or []
    if not tracks:
        print(f"FAIL {what}: {kind}")
        return False
    track = tracks[0]
    info = track["info"]
    print(f"     {what}: {kind}, {len(tracks)} track(s); first: {info['title']!r} by {info['author']!r}, "
          f"{info['length'] / 1000:.0f} s, {info['sourceName']}:{info['identifier']}")
    rest(node, password, "PATCH", f"/v4/sessions/{session}/players/{guild}", {"track": {"encoded": track["encoded"]}})
    # Without a voice channel the position stays put (as on Lavalink); a track that cannot be
    # resolved or streamed ends with a TrackExceptionEvent within seconds of its start.
    started = False
    try:
        async with asyncio.timeout(20):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("guildId") != str(guild):
                    continue
                if msg.get("type") == "TrackStartEvent":
                    started = True
                elif msg.get("type") in ("TrackExceptionEvent", "TrackStuckEvent"):
                    e = msg.get("exception") or {}
                    print(f"FAIL {what}: {msg['type']}: {e.get('message')} ({e.get('cause')})")
                    return False
    except TimeoutError:
        pass
    finally:
        rest(node, password, "DELETE", f"/v4/sessions/{session}/players/{guild}")
    print(f"{'OK  ' if started else 'FAIL'} {what}: {'resolved and streaming for 20 s' if started else 'no TrackStartEvent'}")
    return started


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", default="http://127.0.0.1:2333")
    p.add_argument("--password", default="youshallnotpass")
    p.add_argument("identifiers", nargs="*")
    args = p.parse_args()
    checks = [(i, i) for i in args.identifiers] or CHECKS
    node = args.node.rstrip("/")
    status = rest(node, args.password, "GET", "/v4/caldera/resolver")
    print(f"resolver: {status.get('state')}, yt-dlp {status.get('ytDlp')}, JavaScript runtime {status.get('jsRuntime')}")
    ws_url = node.replace("http", "ws", 1) + "/v4/websocket"
    headers = {"Authorization": args.password, "User-Id": "1", "Client-Name": "caldera-live-check"}
    failed = 0
    async with websockets.connect(ws_url, additional_headers=headers) as ws:
        ready = json.loads(await ws.recv())
        session = ready["sessionId"]
        rest(node, args.password, "PATCH", f"/v4/sessions/{session}", {"resuming": False})
        for i, (what, identifier) in enumerate(checks):
            if not await check(node, args.password, ws, session, 424242 + i, what, identifier):
                failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
