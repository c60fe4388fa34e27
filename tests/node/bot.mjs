// A bot on lavalink-client (npm), as the test scripts drive it: the Discord voice events a bot's
// gateway would deliver are fed in by hand (no Discord here).
import { LavalinkManager } from "lavalink-client";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const timeout = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new Error(`timed out: ${what}`); })]);

// The manager, the player events it saw (`seen`), and `once(event, pred)` to await one.
export function makeBot({ host, port, password, userId, username, retryAmount, retryDelay }) {
  const manager = new LavalinkManager({
    nodes: [{ authorization: password, host, port: Number(port), id: "caldera", retryAmount, retryDelay }],
    sendToShard: () => {}, // the voice join would go to Discord; playTrack feeds the answers
    client: { id: userId, username },
    autoSkip: false,
    playerOptions: { onEmptyQueue: { destroyAfterMs: -1 } },
  });
  const seen = [];
  for (const e of ["trackStart", "trackEnd", "queueEnd", "trackError", "trackStuck", "playerSocketClosed"]) {
    manager.on(e, (_player, track, payload) => seen.push({ event: e, title: track?.info?.title ?? null, reason: payload?.reason ?? null }));
  }
  const once = (event, pred = () => true) => new Promise((resolve) => {
    const f = (...args) => { if (pred(...args)) { manager.off(event, f); resolve(args); } };
    manager.on(event, f);
  });
  return { manager, seen, once, userId, username };
}

// Connects to the node, joins `channelId` in `guildId` through `endpoint`, and plays `url` until
// its trackStart. Returns the node and the player.
export async function playTrack({ manager, once, userId, username }, { guildId, channelId, url, endpoint, voice }) {
  const ready = new Promise((resolve) => manager.nodeManager.on("connect", resolve));
  await manager.init({ id: userId, username });
  await timeout(ready, 10000, "node connect");
  const node = manager.nodeManager.nodes.get("caldera");
  const player = manager.createPlayer({ guildId, voiceChannelId: channelId, volume: 100 });
  await player.connect();
  await manager.sendRawData({ t: "VOICE_STATE_UPDATE", d: { guild_id: guildId, user_id: userId, session_id: `${voice}-voice-session`, channel_id: channelId } });
  await manager.sendRawData({ t: "VOICE_SERVER_UPDATE", d: { guild_id: guildId, token: `${voice}-token`, endpoint } });
  const res = await player.search({ query: url, source: "http" }, { id: "requester" });
  if (!res.tracks.length) throw new Error(`search found nothing: ${JSON.stringify(res.loadType)}`);
  await player.queue.add(res.tracks[0]);
  const started = once("trackStart");
  await player.play();
  await timeout(started, 10000, "trackStart");
  return { node, player };
}
