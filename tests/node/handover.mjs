// A bot on lavalink-client (npm) across a gateway handover: it plays a track with resuming on,
// prints HANDOVER when the test may signal the gateway, and reports how its session came back.
// Usage: node handover.mjs HOST PORT PASSWORD TRACK_URL VOICE_ENDPOINT GUILD_ID
// Prints one JSON line with what it saw; exits non-zero on failure.
import { LavalinkManager } from "lavalink-client";

const [host, port, password, url, endpoint, guildId] = process.argv.slice(2);
const USER_ID = "170000000000000004";
const CHANNEL_ID = "900000000000000004";
const seen = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const timeout = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new Error(`timed out: ${what}`); })]);

const manager = new LavalinkManager({
  nodes: [{ authorization: password, host, port: Number(port), id: "caldera", retryAmount: 20, retryDelay: 250 }],
  sendToShard: () => {},
  client: { id: USER_ID, username: "caldera-handover" },
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
  await manager.init({ id: USER_ID, username: "caldera-handover" });
  await timeout(ready, 10000, "node connect");
  const node = manager.nodeManager.nodes.get("caldera");
  const player = manager.createPlayer({ guildId, voiceChannelId: CHANNEL_ID, volume: 100 });
  await player.connect();
  await manager.sendRawData({ t: "VOICE_STATE_UPDATE", d: { guild_id: guildId, user_id: USER_ID, session_id: "handover-voice-session", channel_id: CHANNEL_ID } });
  await manager.sendRawData({ t: "VOICE_SERVER_UPDATE", d: { guild_id: guildId, token: "handover-token", endpoint } });
  const res = await player.search({ query: url, source: "http" }, { id: "requester" });
  if (!res.tracks.length) throw new Error(`search found nothing: ${JSON.stringify(res.loadType)}`);
  await player.queue.add(res.tracks[0]);
  const started = once("trackStart");
  await player.play();
  await timeout(started, 10000, "trackStart");
  // Resuming on, the session id kept as bots persist it.
  await node.updateSession(true, 30);
  const sessionId = node.sessionId;
  node.options.sessionId = sessionId;
  const closed = new Promise((resolve) => manager.nodeManager.on("disconnect", (_n, reason) => resolve(reason)));
  const resumed = new Promise((resolve) => manager.nodeManager.on("resumed", (_n, payload) => resolve(payload)));
  const ended = Promise.race([once("trackEnd"), once("queueEnd")]);
  console.log("HANDOVER");
  const closeReason = await timeout(closed, 30000, "the node's socket to close");
  const resumedPayload = await timeout(resumed, 15000, "resume").catch((e) => ({ error: String(e) }));
  const fetched = await node.fetchPlayer?.(guildId);
  const [, , endPayload] = await timeout(ended, 20000, "trackEnd");
  await player.destroy();
  console.log(JSON.stringify({
    seen, closeCode: closeReason?.code ?? null, sameSession: node.sessionId === sessionId, resumed: Array.isArray(resumedPayload) || !resumedPayload?.error,
    resumeError: resumedPayload?.error ?? null, position: fetched?.state?.position ?? null, endReason: endPayload?.reason ?? null,
  }));
  process.exit(0);
} catch (e) {
  console.error(e?.stack ?? String(e));
  console.log(JSON.stringify({ seen, error: String(e) }));
  process.exit(1);
}
