// OpenCode's JavaScript SDK (@opencode-ai/sdk, pinned beside the CLI) against the service, as a
// user's script would use it: list sessions, create one, prompt it synchronously and
// asynchronously, follow /event and /global/event, read its messages, and abort a reply.
// Run by tests/tests/e2e/opencode_sdk.rs with OC_URL and OC_KEY (an API key with a default
// workspace) and OC_PROMPT_SHORT / OC_PROMPT_LONG (fake-provider prompts). Prints one JSON
// summary on stdout; exits non-zero, saying why, on anything unexpected.
import { createOpencodeClient } from "@opencode-ai/sdk"

const { OC_URL, OC_KEY, OC_PROMPT_SHORT, OC_PROMPT_LONG } = process.env
const deadline = Date.now() + 60_000
const fail = (why) => {
  console.error(`sdk-check: ${why}`)
  process.exit(1)
}
const ok = ({ data, error, response }, what) => {
  if (error !== undefined || !response.ok) fail(`${what}: ${response.status} ${JSON.stringify(error)}`)
  return data
}

const client = createOpencodeClient({
  baseUrl: OC_URL,
  headers: { Authorization: `Basic ${Buffer.from(`sdk:${OC_KEY}`).toString("base64")}` },
})

// Both event streams, followed from the start, into arrays the checks below wait on.
const events = []
const globalEvents = []
const follow = async (subscription, into) => {
  try {
    for await (const e of (await subscription).stream) into.push(e)
  } catch (e) {
    if (Date.now() < deadline) fail(`event stream ended: ${e}`)
  }
}
const controller = new AbortController()
follow(client.event.subscribe({ signal: controller.signal }), events)
follow(client.global.event({ signal: controller.signal }), globalEvents)
const until = async (what, found) => {
  while (Date.now() < deadline) {
    const hit = found()
    if (hit) return hit
    await new Promise((r) => setTimeout(r, 50))
  }
  fail(`timed out waiting for ${what}`)
}
await until("server.connected", () => events.find((e) => e.type === "server.connected"))

const before = ok(await client.session.list(), "session.list")
const session = ok(await client.session.create({ body: { title: "from the SDK" } }), "session.create")
const listed = ok(await client.session.list(), "session.list")
if (!listed.some((s) => s.id === session.id)) fail("the new session is not listed")

const text = (parts) => parts.filter((p) => p.type === "text").map((p) => p.text).join("")
const answer = ok(
  await client.session.prompt({ path: { id: session.id }, body: { parts: [{ type: "text", text: OC_PROMPT_SHORT }] } }),
  "session.prompt",
)
const ofSession = (e) => e.properties?.sessionID === session.id || e.properties?.info?.sessionID === session.id
await until("the first reply's session.idle", () => events.find((e) => e.type === "session.idle" && ofSession(e)))

ok(
  await client.session.promptAsync({ path: { id: session.id }, body: { parts: [{ type: "text", text: OC_PROMPT_LONG }] } }),
  "session.promptAsync",
)
const idles = () => events.filter((e) => e.type === "session.idle" && ofSession(e)).length
await until("a delta of the second reply", () =>
  events.find((e) => e.type === "message.part.delta" && ofSession(e) && e.properties.messageID !== answer.info.id),
)
ok(await client.session.abort({ path: { id: session.id } }), "session.abort")
await until("the aborted reply's session.idle", () => idles() >= 2)

const messages = ok(await client.session.messages({ path: { id: session.id } }), "session.messages")
await until("a /global/event payload of the session", () =>
  globalEvents.find((e) => e.payload && ofSession(e.payload) && typeof e.directory === "string"),
)
controller.abort()

console.log(
  JSON.stringify({
    sessionsBefore: before.length,
    session: session.id,
    directory: session.directory,
    promptText: text(answer.parts),
    promptFinish: answer.info.finish,
    messages: messages.map((m) => ({ role: m.info.role, text: text(m.parts), error: m.info.error?.name ?? null })),
    eventTypes: [...new Set(events.filter(ofSession).map((e) => e.type))].sort(),
    globalDirectories: [...new Set(globalEvents.map((e) => e.directory))],
  }),
)
process.exit(0)
