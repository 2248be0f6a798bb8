// The official MCP TypeScript SDK's stdio client launching `switchboard mcp-stdio`, which relays
// to a gateway: initialize, list tools, call one with progress. Prints one JSON line of what it
// saw; tests/tests/mcp_http.rs checks it. Usage: node stdio_client.mjs SWITCHBOARD_BIN WS_URL [TOKEN]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [bin, url, token] = process.argv.slice(2);
const args = ["mcp-stdio", "--url", url];
if (token) args.push("--token", token);
const transport = new StdioClientTransport({ command: bin, args, stderr: "inherit" });
const client = new Client({ name: "switchboard-stdio-test", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const progress = [];
const sleep = await client.callTool({ name: "sleep", arguments: { ms: 300 } }, undefined, {
  onprogress: (p) => progress.push(p),
});
const out = {
  server: client.getServerVersion()?.name ?? null,
  tools: tools.tools.map((t) => t.name).sort(),
  sleep,
  progress,
};
await client.close();
console.log(JSON.stringify(out));
