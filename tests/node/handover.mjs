// A bot on lavalink-client (npm) across a gateway handover: it plays a track with resuming on,
// prints HANDOVER when the test may signal the gateway, and reports how its session came back.
// Usage: node handover.mjs HOST PORT PASSWORD TRACK_URL VOICE_ENDPOINT GUILD_ID
// Prints one JSON line with what it saw; exits non-zero on failure.
import { makeBot, playTrack, timeout } from "./bot.mjs";

const [host, port, password, url, endpoint, guildId] = process.argv.slice(2);
const bot = makeBot({ host, port, password, userId: "170000000000000004", username: "caldera-handover", retryAmount: 20, retryDelay: 250 });
const { manager, seen, once } = bot;

try {
  const { node, player } = await playTrack(bot, { guildId, channelId: "900000000000000004", url, endpoint, voice: "handover" });
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
