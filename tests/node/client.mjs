// Drives Caldera with lavalink-client (npm) as a bot would, with the Discord voice events a bot's
// gateway would deliver fed in by hand (no Discord here).
// Usage: node client.mjs HOST PORT PASSWORD TRACK_URL VOICE_ENDPOINT GUILD_ID
// Prints one JSON line with what it saw; exits non-zero on failure.
import { makeBot, playTrack, sleep, timeout } from "./bot.mjs";

const [host, port, password, url, endpoint, guildId] = process.argv.slice(2);
const bot = makeBot({ host, port, password, userId: "170000000000000003", username: "caldera-test", retryAmount: 3, retryDelay: 500 });
const { manager, seen, once } = bot;

try {
  const { node, player } = await playTrack(bot, { guildId, channelId: "900000000000000003", url, endpoint, voice: "node" });
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
