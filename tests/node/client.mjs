// Drives Caldera with lavalink-client (npm) as a bot would, with the Discord voice events a bot's
// gateway would deliver fed in by hand (no Discord here).
// Usage: node client.mjs HOST PORT PASSWORD TRACK_URL VOICE_ENDPOINT GUILD_ID
// Prints one JSON line with what it saw; exits non-zero on failure.
import { LavalinkManager } from "lavalink-client";

const [host, port, password, url, endpoint, guildId] = process.argv.slice(2);
const USER_ID = "170000000000000003";
const CHANNEL_ID = "900000000000000003";
const seen = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const timeout = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new Error(`timed out: ${what}`); })]);

const manager = new LavalinkManager({
  nodes: [{ authorization: password, host, port: Number(port), id: "caldera", retryAmount: 3, retryDelay: 500 }],
  sendToShard: () => {}, // the voice join would go to Discord; the test feeds the answers below
  client: { id: USER_ID, username: "caldera-test" },
  autoSkip: false,
  playerOptions: { onEmptyQueue: { destroyAfterMs: -1 } },
});
const once = (event, pred = () => true) => new Promise((resolve) => {
  const f = (...args) => { if (pred(...args)) { manager.off(event, f); resolve(args); } };
  manager.on(event, f);
});
for (const e of ["trackStart", "trackEnd", "queueEnd", "trackError", "trackStuck", "playerSocketClosed"]) {
  manager.on(e, (_player, track, payload) => seen.push({ event: e, title: track?.info?.title ?? null, reason: payload?.reason ?? null }));
}

try {
  const ready = new Promise((resolve) => manager.nodeManager.on("connect", resolve));
  await manager.init({ id: USER_ID, username: "caldera-test" });
  await timeout(ready, 10000, "node connect");
  const node = manager.nodeManager.nodes.get("caldera");
  const player = manager.createPlayer({ guildId, voiceChannelId: CHANNEL_ID, volume: 100 });
  await player.connect();
  await manager.sendRawData({ t: "VOICE_STATE_UPDATE", d: { guild_id: guildId, user_id: USER_ID, session_id: "node-voice-session", channel_id: CHANNEL_ID } });
  await manager.sendRawData({ t: "VOICE_SERVER_UPDATE", d: { guild_id: guildId, token: "node-token", endpoint } });
  const res = await player.search({ query: url, source: "http" }, { id: "requester" });
  if (!res.tracks.length) throw new Error(`search found nothing: ${JSON.stringify(res.loadType)}`);
  await player.queue.add(res.tracks[0]);
  const started = once("trackStart");
  await player.play();
  await timeout(started, 10000, "trackStart");
  await sleep(500);
  await player.pause();
  const pausedPos = (await node.fetchPlayer?.(guildId))?.state?.position ?? null;
  await sleep(400);
  await player.resume();
  await player.setVolume(50);
  // Filters through the library's filter manager: nightcore is timescale, then a low pass.
  await player.filterManager.toggleNightcore();
  await player.filterManager.toggleLowPass(20);
  const withFilters = await node.fetchPlayer?.(guildId);
  await player.seek(1000);
  // Resume: enable it, drop the socket, let the client reconnect with its session id.
  await node.updateSession(true, 30);
  const sessionId = node.sessionId;
  const resumed = new Promise((resolve) => manager.nodeManager.on("resumed", (n, payload) => resolve(payload)));
  // With nothing queued after it, lavalink-client reports the end of the last track as queueEnd.
  const ended = Promise.race([once("trackEnd"), once("queueEnd")]);
  // lavalink-client resumes when the node options carry the session id (as bots persist it).
  node.options.sessionId = sessionId;
  node.socket.terminate();
  const resumedPayload = await timeout(resumed, 10000, "resume").catch((e) => ({ error: String(e) }));
  const [, , endPayload] = await timeout(ended, 15000, "trackEnd");
  const fetched = await node.fetchPlayer?.(guildId);
  await player.destroy();
  console.log(JSON.stringify({
    seen, pausedPos, endReason: endPayload?.reason, volume: fetched?.volume ?? null, filters: withFilters?.filters ?? null,
    sameSession: node.sessionId === sessionId, resumed: resumedPayload,
  }));
  process.exit(0);
} catch (e) {
  console.error(e?.stack ?? String(e));
  console.log(JSON.stringify({ seen, error: String(e) }));
  process.exit(1);
}
