"""Loads and decodes tracks through the real `lavalink` client library (PyPI), as a bot would.

Usage: python3 load_and_decode.py HOST PORT PASSWORD URL
Prints one JSON line with what the library parsed; exits non-zero on any failure.
"""
import asyncio
import json
import sys

import lavalink


async def main(host: str, port: int, password: str, url: str) -> None:
    client = lavalink.Client(user_id=123456789012345678)
    # No Discord here: REST only, so the node's websocket is not needed.
    node = client.add_node(host, port, password, "eu", "caldera", connect=False)
    try:
        result = await client.get_tracks(url, node=node)
        assert result.load_type == lavalink.LoadType.TRACK, result.load_type
        track = result.tracks[0]
        decoded = await client.decode_track(track.track, node=node)
        both = await client.decode_tracks([track.track, track.track], node=node)
        missing = await client.get_tracks(url + ".missing", node=node)
        print(json.dumps({
            "title": track.title,
            "author": track.author,
            "duration": track.duration,
            "stream": track.stream,
            "source": track.source_name,
            "uri": track.uri,
            "decoded_title": decoded.title,
            "decoded_identifier": decoded.identifier,
            "decoded_count": len(both),
            "missing": str(missing.load_type),
        }))
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
