"""Caldera's resolver: a long-lived process embedding yt-dlp, supervised by the gateway.

Protocol (version 1): one JSON object per line on stdin (requests) and stdout (answers); logs go
to stderr only, and nothing else may write to stdout (yt-dlp's output goes through a logger).

  first line out:  {"type": "hello", "protocol": 1, "ytDlp": "...", "python": "...", "jsRuntime": "deno 2.x" | null}
  ping:            {"type": "ping", "seq": N}                      -> {"type": "pong", "seq": N}
  load:            {"type": "load", "id": N, "query": "...", "family": "youtube" | ... | "generic" | null,
                    "sourceAddress": "ip" | null, "timeoutMs": N, "limit": N}
                   -> {"type": "loaded", "id": N, "result": {"loadType": ..., ...}}
  resolve:         {"type": "resolve", "id": N, "query": "...", "family": ..., "sourceAddress": ...,
                    "timeoutMs": N}
                   -> {"type": "resolved", "id": N, "result": {"stream": {...}} | {"error": {...}}}

Requests run on a bounded thread pool; pings are answered from the reading thread, so a busy
pool never looks like a hang. The gateway enforces every deadline on its side and kills this
process if it stops answering pings, grows past its memory limit or writes anything that is not
a protocol line.
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse

PROTOCOL = 1
# A value Lavalink uses for the length of a stream (Long.MAX_VALUE).
STREAM_LENGTH = 9223372036854775807
# Protocols the worker can stream: plain ranged HTTP and HLS.
PLAYABLE = "[protocol!*=dash][protocol!*=f4][protocol!*=ism][protocol!*=rtmp][protocol!*=rtsp][protocol!*=mms]"
# Opus first (it passes through the worker untouched), then any audio, then anything with audio.
FORMAT = "/".join([
    f"bestaudio[acodec=opus]{PLAYABLE}",
    f"bestaudio{PLAYABLE}",
    f"best[acodec!=none]{PLAYABLE}",
])

# Extractor families: the source name Lavalink clients know, and the extractors it covers.
FAMILIES = {
    "youtube": "Youtube",
    "soundcloud": "Soundcloud",
    "bandcamp": "Bandcamp",
    "twitch": "Twitch",
    "vimeo": "Vimeo",
}

out_lock = threading.Lock()
# The protocol stream: stdout as it was given. File descriptor 1 is then pointed at stderr, so
# nothing else (a library's print, a child process) can ever write into the protocol.
protocol_out = None


def send(obj):
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    with out_lock:
        protocol_out.write(line + "\n")
        protocol_out.flush()


def log(level, message):
    sys.stderr.write(f"{level} {message}\n")
    sys.stderr.flush()


class Logger:
    """Keeps yt-dlp's output off stdout; warnings and errors go to stderr."""

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        log("WARN", msg)

    def error(self, msg):
        log("ERROR", msg)


class LoadError(Exception):
    def __init__(self, message, severity, cause):
        super().__init__(message)
        self.message = message
        self.severity = severity
        self.cause = cause


def js_runtime():
    deno = shutil.which("deno")
    if not deno:
        return None
    try:
        out = subprocess.run([deno, "--version"], capture_output=True, timeout=10, text=True)
        first = out.stdout.splitlines()[0] if out.stdout else ""
        return first.strip() or None
    except Exception as e:  # a sandbox that forbids exec, a broken binary
        log("WARN", f"deno is installed but cannot run: {e}")
        return None


def extractor_for(url, family):
    """The ie_key of the family's extractor that takes `url` (skips matching every extractor)."""
    import yt_dlp.extractor

    if family == "generic":
        return "Generic"
    prefix = FAMILIES.get(family)
    if not prefix:
        return None
    for cls in yt_dlp.extractor.gen_extractor_classes():
        key = cls.ie_key()
        if key.startswith(prefix) and cls.suitable(url):
            return key
    return None


def ydl(request, **extra):
    import yt_dlp

    params = {
        "logger": Logger(),
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "skip_download": True,
        "noplaylist": False,
        "socket_timeout": max(1, request.get("timeoutMs", 20000) / 1000),
        "cachedir": os.environ.get("CALDERA_RESOLVER_CACHE") or False,
        "format": FORMAT,
        "extractor_retries": 1,
        "color": {"stderr": "no_color", "stdout": "no_color"},
    }
    if request.get("sourceAddress"):
        params["source_address"] = request["sourceAddress"]
    params.update(extra)
    return yt_dlp.YoutubeDL(params)


def severity_of(e):
    """Lavalink's severities: known and expected causes are common, the rest suspicious."""
    text = str(e).lower()
    for common in ("video unavailable", "is private", "not available", "does not exist", "http error 404",
                   "has been removed", "copyright", "sign in to confirm your age", "age-restricted",
                   "members-only", "unsupported url", "no video formats", "requested format"):
        if common in text:
            return "common"
    return "suspicious"


def clean_message(e):
    text = str(e)
    if text.startswith("ERROR: "):
        text = text[len("ERROR: "):]
    return text[:2000]


def extract(request, **extra):
    import yt_dlp

    query = request["query"]
    family = request.get("family")
    ie_key = None
    if not query.startswith(("ytsearch", "scsearch")):
        ie_key = extractor_for(query, family)
    try:
        with ydl(request, **extra) as y:
            return y.extract_info(query, download=False, ie_key=ie_key)
    except yt_dlp.utils.DownloadError as e:
        raise LoadError("Something went wrong when looking up the track.", severity_of(e), clean_message(e))


# ---- mapping yt-dlp's info dicts to Lavalink tracks ------------------------------------------

def source_name(info):
    key = (info.get("ie_key") or info.get("extractor_key") or "").lower()
    for name, prefix in FAMILIES.items():
        if key.startswith(prefix.lower()):
            return name
    return "yt-dlp"


def youtube_id(info):
    vid = info.get("id")
    return vid if isinstance(vid, str) and len(vid) == 11 else None


def to_track(info):
    """One Lavalink TrackInfo from a (possibly flat) info dict."""
    source = source_name(info)
    title = info.get("track") or info.get("title") or "Unknown title"
    author = (info.get("artist") or info.get("creator") or info.get("uploader") or info.get("channel")
              or info.get("playlist_uploader") or "Unknown artist")
    if isinstance(author, list):
        author = ", ".join(str(a) for a in author)
    live = bool(info.get("is_live")) or info.get("live_status") == "is_live"
    duration = info.get("duration")
    length = STREAM_LENGTH if live or not duration else int(round(float(duration) * 1000))
    uri = info.get("webpage_url") or info.get("original_url")
    if not uri and isinstance(info.get("url"), str) and info.get("_type") in ("url", "url_transparent"):
        uri = info["url"]
    identifier = str(info.get("id") or uri or "")
    artwork = info.get("thumbnail")
    if not artwork and info.get("thumbnails"):
        artwork = info["thumbnails"][-1].get("url")
    if isinstance(artwork, str) and isinstance(uri, str):
        artwork = urllib.parse.urljoin(uri, artwork)
    if source == "youtube" and youtube_id(info):
        vid = youtube_id(info)
        identifier = vid
        uri = f"https://www.youtube.com/watch?v={vid}"
        artwork = f"https://i.ytimg.com/vi/{vid}/maxresdefault.jpg" if not live else f"https://i.ytimg.com/vi/{vid}/maxresdefault_live.jpg"
    elif source in ("bandcamp", "vimeo", "twitch") and uri:
        identifier = uri
    return {
        "identifier": identifier[:2000],
        "isSeekable": not live,
        "author": str(author)[:2000],
        "length": length,
        "isStream": live,
        "position": 0,
        "title": str(title)[:2000],
        "uri": uri[:4000] if isinstance(uri, str) else None,
        "artworkUrl": artwork[:4000] if isinstance(artwork, str) else None,
        "isrc": info.get("isrc") if isinstance(info.get("isrc"), str) else None,
        "sourceName": source,
    }


def selected_index(query, entries):
    """Lavalink's selectedTrack: the entry the URL points at (YouTube's v= / index=), else -1."""
    params = urllib.parse.parse_qs(urllib.parse.urlparse(query).query)
    if "v" in params:
        for i, e in enumerate(entries):
            if e.get("id") == params["v"][0]:
                return i
    if "index" in params:
        try:
            i = int(params["index"][0]) - 1
            if 0 <= i < len(entries):
                return i
        except ValueError:
            pass
    return -1


def to_result(info, query, search, limit):
    """Lavalink's load result (loadType + data) from yt-dlp's processed info dict."""
    if info is None:
        return {"loadType": "empty"}
    if info.get("_type") in ("playlist", "multi_video"):
        entries = [e for e in (info.get("entries") or []) if e][:limit]
        tracks = [to_track(e) for e in entries]
        if search:
            return {"loadType": "search", "tracks": tracks} if tracks else {"loadType": "empty"}
        if not tracks:
            return {"loadType": "empty"}
        return {"loadType": "playlist", "name": str(info.get("title") or "Unknown playlist")[:2000],
                "selectedTrack": selected_index(query, entries), "tracks": tracks}
    track = to_track(info)
    if search:
        return {"loadType": "search", "tracks": [track]}
    return {"loadType": "track", "track": track}


def handle_load(request):
    query = request["query"]
    limit = int(request.get("limit") or 100)
    search = query.startswith(("ytsearch", "scsearch")) or "music.youtube.com/search" in query
    info = extract(request, extract_flat="in_playlist", playlistend=limit)
    return to_result(info, query, search, limit)


# ---- resolving a track to a stream the worker can play ---------------------------------------

def to_stream(info):
    chosen = info
    if info.get("requested_formats"):
        audio = [f for f in info["requested_formats"] if f.get("acodec") not in (None, "none")]
        chosen = audio[0] if audio else info["requested_formats"][0]
    url = chosen.get("url")
    if not url:
        raise LoadError("No playable format was found.", "common", "yt-dlp returned no media URL")
    protocol = chosen.get("protocol") or ""
    headers = chosen.get("http_headers") or info.get("http_headers") or {}
    return {
        "url": url,
        "headers": [[str(k), str(v)] for k, v in headers.items()],
        "hls": protocol.startswith("m3u8"),
        "availableAt": chosen.get("available_at") or info.get("available_at"),
        "isLive": bool(info.get("is_live")),
        "codec": chosen.get("acodec"),
        "container": chosen.get("ext"),
        "formatId": chosen.get("format_id"),
    }


def handle_resolve(request):
    info = extract(request)
    if info is None:
        raise LoadError("The track is not available.", "common", "yt-dlp found nothing")
    if info.get("_type") in ("playlist", "multi_video"):
        entries = [e for e in (info.get("entries") or []) if e]
        if not entries:
            raise LoadError("The track is not available.", "common", "the link names an empty playlist")
        info = entries[0]
    return {"stream": to_stream(info)}


def run(request):
    kind = request.get("type")
    rid = request.get("id")
    try:
        if kind == "load":
            send({"type": "loaded", "id": rid, "result": handle_load(request)})
        else:
            send({"type": "resolved", "id": rid, "result": handle_resolve(request)})
    except LoadError as e:
        answer = "loaded" if kind == "load" else "resolved"
        send({"type": answer, "id": rid, "result": {"loadType": "error", "error":
              {"message": e.message, "severity": e.severity, "cause": e.cause}}})
    except Exception as e:  # a bug in yt-dlp or here: the node must still get an answer
        answer = "loaded" if kind == "load" else "resolved"
        send({"type": answer, "id": rid, "result": {"loadType": "error", "error":
              {"message": "Something broke when looking up the track.", "severity": "fault",
               "cause": f"{type(e).__name__}: {str(e)[:2000]}"}}})


def deny_networks():
    """Refuses connections to the operator's denied networks (`caldera.outbound.denyNetworks`):
    every address a name resolves to is checked, so a redirect or a name cannot reach them."""
    import ipaddress
    import socket

    nets = [ipaddress.ip_network(n, strict=False) for n in os.environ.get("CALDERA_RESOLVER_DENY", "").split()]
    if not nets:
        return
    resolve = socket.getaddrinfo

    def denied(addr):
        ip = ipaddress.ip_address(addr.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in nets)

    def getaddrinfo(host, *args, **kwargs):
        found = resolve(host, *args, **kwargs)
        allowed = [a for a in found if a[0] not in (socket.AF_INET, socket.AF_INET6) or not denied(a[4][0])]
        if found and not allowed:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves only to denied networks (caldera.outbound.denyNetworks)")
        return allowed

    socket.getaddrinfo = getaddrinfo


def main():
    global protocol_out
    protocol_out = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    deny_networks()
    import yt_dlp.version

    workers = max(1, int(os.environ.get("CALDERA_RESOLVER_CONCURRENCY", "4")))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolve")
    send({"type": "hello", "protocol": PROTOCOL, "ytDlp": yt_dlp.version.__version__,
          "python": sys.version.split()[0], "jsRuntime": js_runtime()})
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            log("WARN", "ignoring a line that is not JSON")
            continue
        kind = request.get("type") if isinstance(request, dict) else None
        if kind == "ping":
            send({"type": "pong", "seq": request.get("seq")})
        elif kind in ("load", "resolve") and isinstance(request.get("query"), str):
            pool.submit(run, request)
        elif kind == "shutdown":
            break
        else:
            log("WARN", f"ignoring an unknown request: {str(kind)[:100]}")
    pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main()
