"""The resolver's mapping of yt-dlp results to Lavalink tracks and streams, offline.

The info dicts below are SYNTHETIC: written here in the shape yt-dlp's YouTube, SoundCloud and
Bandcamp extractors return (fields and format lists as those extractors fill them), then run
through yt-dlp's real processing (`YoutubeDL.process_ie_result`: format sorting and selection,
field completion) before the resolver maps them, exactly as a live lookup would be.

Run: resolver/venv/bin/python resolver/test_resolver.py (the Rust suite runs it too).
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caldera_resolver as r  # noqa: E402


def processed(info, **params):
    """yt-dlp's own processing of an extractor's result, with the resolver's parameters."""
    with r.ydl({"timeoutMs": 5000}, **params) as y:
        return y.process_ie_result(info, download=False)


VIDEO_ID = "dQw4w9WgXcQ"


def youtube_video(live=False):
    fmt = lambda fid, ext, acodec, abr, proto="https", vcodec="none": {  # noqa: E731
        "format_id": fid, "ext": ext, "acodec": acodec, "vcodec": vcodec, "abr": abr, "tbr": abr,
        "url": f"https://rr1---sn-test.googlevideo.com/videoplayback?itag={fid}&expire=1",
        "protocol": proto, "asr": 48000 if acodec == "opus" else 44100, "audio_channels": 2,
        "http_headers": {"User-Agent": "Mozilla/5.0 (synthetic)"},
        "downloader_options": {"http_chunk_size": 10485760},
    }
    formats = [
        fmt("139", "m4a", "mp4a.40.5", 48),
        fmt("140", "m4a", "mp4a.40.2", 129),
        fmt("249", "webm", "opus", 50),
        fmt("251", "webm", "opus", 135),
        fmt("251-drc", "webm", "opus", 135, proto="http_dash_segments"),
        fmt("18", "mp4", "mp4a.40.2", 400, vcodec="avc1.42001E"),
    ]
    if live:
        formats = [fmt("91", "mp4", "mp4a.40.5", 48, proto="m3u8_native", vcodec="avc1.4d400c"),
                   fmt("233", "mp4", "mp4a.40.2", 128, proto="m3u8_native")]
    return {
        "id": VIDEO_ID, "title": "Never Gonna Give You Up", "channel": "Rick Astley",
        "uploader": "Rick Astley", "duration": 212, "is_live": live,
        "live_status": "is_live" if live else "not_live",
        "webpage_url": f"https://www.youtube.com/watch?v={VIDEO_ID}",
        "thumbnail": f"https://i.ytimg.com/vi_webp/{VIDEO_ID}/maxresdefault.webp",
        "extractor": "youtube", "extractor_key": "Youtube", "formats": formats,
    }


def youtube_playlist():
    entries = [{
        "_type": "url", "ie_key": "Youtube", "id": vid, "url": f"https://www.youtube.com/watch?v={vid}",
        "title": f"Video {i}", "duration": 100 + i, "channel": "Channel", "uploader": "Channel",
    } for i, vid in enumerate(["aaaaaaaaaaa", VIDEO_ID, "bbbbbbbbbbb"])]
    return {
        "_type": "playlist", "id": "PLtest", "title": "A playlist", "entries": entries,
        "webpage_url": "https://www.youtube.com/playlist?list=PLtest",
        "extractor": "youtube:tab", "extractor_key": "YoutubeTab",
    }


def soundcloud_track():
    return {
        "id": "123456789", "display_id": "artist/song", "title": "Song", "uploader": "Artist",
        "artist": "The Artist", "duration": 185.3,
        "webpage_url": "https://soundcloud.com/artist/song",
        "thumbnail": "https://i1.sndcdn.com/artworks-000-t500x500.jpg",
        "extractor": "soundcloud", "extractor_key": "Soundcloud",
        "formats": [
            {"format_id": "hls_opus_64", "ext": "opus", "acodec": "opus", "vcodec": "none", "abr": 64,
             "protocol": "m3u8_native", "url": "https://cf-hls-opus-media.sndcdn.com/playlist/x.m3u8"},
            {"format_id": "http_mp3_128", "ext": "mp3", "acodec": "mp3", "vcodec": "none", "abr": 128,
             "protocol": "http", "url": "https://cf-media.sndcdn.com/x.128.mp3"},
            {"format_id": "hls_aac_160", "ext": "m4a", "acodec": "aac", "vcodec": "none", "abr": 160,
             "protocol": "m3u8_native", "url": "https://playback.media-streaming.soundcloud.cloud/x/aac.m3u8"},
        ],
    }


def bandcamp_album():
    entries = [{
        "_type": "url_transparent", "ie_key": "Bandcamp", "id": f"track-{i}", "title": f"Track {i}",
        "url": f"https://artist.bandcamp.com/track/track-{i}", "duration": 200.5 + i,
        "artist": "Band", "uploader": "Band",
    } for i in range(2)]
    return {
        "_type": "playlist", "id": "album", "title": "The Album", "uploader": "Band", "entries": entries,
        "webpage_url": "https://artist.bandcamp.com/album/the-album",
        "extractor": "Bandcamp:album", "extractor_key": "BandcampAlbum",
    }


class Mapping(unittest.TestCase):
    def test_youtube_video_track_and_stream(self):
        info = processed(youtube_video())
        t = r.to_track(info)
        self.assertEqual(t["sourceName"], "youtube")
        self.assertEqual(t["identifier"], VIDEO_ID)
        self.assertEqual(t["uri"], f"https://www.youtube.com/watch?v={VIDEO_ID}")
        self.assertEqual(t["artworkUrl"], f"https://i.ytimg.com/vi/{VIDEO_ID}/maxresdefault.jpg")
        self.assertEqual((t["length"], t["isStream"], t["isSeekable"]), (212000, False, True))
        self.assertEqual((t["title"], t["author"]), ("Never Gonna Give You Up", "Rick Astley"))
        s = r.to_stream(info)
        # The best Opus audio over plain HTTP: it passes through the worker untouched.
        self.assertEqual(s["formatId"], "251")
        self.assertEqual((s["codec"], s["hls"], s["isLive"]), ("opus", False, False))
        self.assertIn(["User-Agent", "Mozilla/5.0 (synthetic)"], s["headers"])

    def test_youtube_live_is_a_stream_over_hls(self):
        info = processed(youtube_video(live=True))
        t = r.to_track(info)
        self.assertEqual((t["isStream"], t["length"], t["isSeekable"]), (True, r.STREAM_LENGTH, False))
        self.assertTrue(t["artworkUrl"].endswith("maxresdefault_live.jpg"))
        s = r.to_stream(info)
        self.assertEqual((s["hls"], s["isLive"], s["formatId"]), (True, True, "233"))

    def test_youtube_playlist_selects_the_linked_video(self):
        info = processed(youtube_playlist(), extract_flat="in_playlist")
        result = r.to_result(info, f"https://www.youtube.com/watch?v={VIDEO_ID}&list=PLtest", False, 100)
        self.assertEqual(result["loadType"], "playlist")
        self.assertEqual((result["name"], result["selectedTrack"]), ("A playlist", 1))
        self.assertEqual([t["identifier"] for t in result["tracks"]], ["aaaaaaaaaaa", VIDEO_ID, "bbbbbbbbbbb"])
        self.assertTrue(all(t["sourceName"] == "youtube" for t in result["tracks"]))
        self.assertEqual(result["tracks"][0]["length"], 100000)
        limited = r.to_result(info, "https://www.youtube.com/playlist?list=PLtest", False, 2)
        self.assertEqual((len(limited["tracks"]), limited["selectedTrack"]), (2, -1))

    def test_a_search_is_a_search(self):
        info = processed(dict(youtube_playlist(), id="hello", title="hello", extractor_key="YoutubeSearch"),
                         extract_flat="in_playlist")
        result = r.to_result(info, "ytsearch20:hello", True, 100)
        self.assertEqual(result["loadType"], "search")
        self.assertEqual(len(result["tracks"]), 3)
        empty = r.to_result(dict(info, entries=[]), "ytsearch20:nothing", True, 100)
        self.assertEqual(empty["loadType"], "empty")

    def test_soundcloud_prefers_opus_even_over_hls(self):
        info = processed(soundcloud_track())
        t = r.to_track(info)
        self.assertEqual((t["sourceName"], t["identifier"], t["author"]), ("soundcloud", "123456789", "The Artist"))
        self.assertEqual((t["length"], t["uri"]), (185300, "https://soundcloud.com/artist/song"))
        s = r.to_stream(info)
        self.assertEqual((s["formatId"], s["hls"], s["codec"]), ("hls_opus_64", True, "opus"))

    def test_bandcamp_album_is_a_playlist_of_bandcamp_tracks(self):
        info = processed(bandcamp_album(), extract_flat="in_playlist")
        result = r.to_result(info, "https://artist.bandcamp.com/album/the-album", False, 100)
        self.assertEqual((result["loadType"], result["name"], result["selectedTrack"]), ("playlist", "The Album", -1))
        first = result["tracks"][0]
        self.assertEqual(first["sourceName"], "bandcamp")
        self.assertEqual(first["identifier"], "https://artist.bandcamp.com/track/track-0")
        self.assertEqual((first["uri"], first["length"], first["author"]), (first["identifier"], 200500, "Band"))

    def test_formats_the_worker_cannot_stream_are_never_chosen(self):
        info = youtube_video()
        info["formats"] = [f for f in info["formats"] if f["format_id"] == "251-drc"]
        with self.assertRaises(Exception):
            processed(info)

    def test_severities(self):
        self.assertEqual(r.severity_of(Exception("ERROR: [youtube] x: Video unavailable")), "common")
        self.assertEqual(r.severity_of(Exception("Unable to download API page: Failed to resolve")), "suspicious")


if __name__ == "__main__":
    unittest.main(verbosity=2)
