"""Plays a track through the real `lavalink` client library (PyPI), as a bot would, with the
Discord voice events a bot's gateway would deliver fed in by hand (no Discord here).

Usage: python3 play.py HOST PORT PASSWORD TRACK_URL VOICE_ENDPOINT GUILD_ID
Prints one JSON line with the events seen; exits non-zero on failure or timeout.
"""
import asyncio
import json
import sys

import lavalink

USER_ID = 170000000000000002
CHANNEL_ID = 900000000000000002


async def main(host, port, password, url, endpoint, guild_id):
    client = lavalink.Client(user_id=USER_ID)
    seen = []
    done = asyncio.get_running_loop().create_future()

    @lavalink.listener(lavalink.TrackStartEvent, lavalink.TrackEndEvent, lavalink.TrackExceptionEvent)
    async def on_event(event):
        seen.append({"type": type(event).__name__, "title": event.track.title if event.track else None,
                     "reason": str(getattr(event, "reason", ""))})
        if isinstance(event, lavalink.TrackEndEvent) and not done.done():
            done.set_result(None)

    client.add_event_hook(on_event)
    node = client.add_node(host, port, password, "eu", "caldera")
    try:
        for _ in range(100):
            if node.available:
                break
            await asyncio.sleep(0.1)
        assert node.available, "node websocket never became available"
        result = await client.get_tracks(url)
        assert result.load_type == lavalink.LoadType.TRACK, result.load_type
        player = client.player_manager.create(guild_id)
        await client.voice_update_handler({"t": "VOICE_STATE_UPDATE", "d": {
            "guild_id": str(guild_id), "user_id": str(USER_ID), "session_id": "py-voice-session",
            "channel_id": str(CHANNEL_ID)}})
        await client.voice_update_handler({"t": "VOICE_SERVER_UPDATE", "d": {
            "guild_id": str(guild_id), "token": "py-token", "endpoint": endpoint}})
        player.add(requester=0, track=result.tracks[0])
        await player.play()
        await asyncio.wait_for(done, timeout=20)
        print(json.dumps({"events": seen}))
    finally:
        await client.close()


if __name__ == "__main__":
    a = sys.argv
    asyncio.run(main(a[1], int(a[2]), a[3], a[4], a[5], int(a[6])))
