#!/usr/bin/env node
// The tools the official MCP conformance suite's server scenarios call, as one Switchboard
// command tool script (docs/tools.md): `node conformance.mjs NAME` reads the call's arguments
// as JSON on stdin, prints the CallToolResult as JSON on stdout, and reports progress as JSON
// lines on stderr. No dependencies: the system's Node runs it. What each tool answers is what
// the suite's scenario descriptions ask for (`conformance list`; docs/mcp.md, "Conformance").

const name = process.argv[2];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A 1x1 red PNG.
const PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';

// A minimal WAV: 8 kHz, 8-bit mono, 8 samples of silence.
function wav() {
  const samples = Buffer.alloc(8, 0x80);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + samples.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(8000, 24); // sample rate
  header.writeUInt32LE(8000, 28); // byte rate
  header.writeUInt16LE(1, 32); // block align
  header.writeUInt16LE(8, 34); // bits per sample
  header.write('data', 36);
  header.writeUInt32LE(samples.length, 40);
  return Buffer.concat([header, samples]).toString('base64');
}

const text = (t) => ({ content: [{ type: 'text', text: t }] });

const tools = {
  test_simple_text: async () => text('This is a simple text response for testing.'),
  test_image_content: async () => ({
    content: [{ type: 'image', data: PNG, mimeType: 'image/png' }],
  }),
  test_audio_content: async () => ({
    content: [{ type: 'audio', data: wav(), mimeType: 'audio/wav' }],
  }),
  test_embedded_resource: async () => ({
    content: [
      {
        type: 'resource',
        resource: {
          uri: 'test://embedded-resource',
          mimeType: 'text/plain',
          text: 'This is an embedded resource content.',
        },
      },
    ],
  }),
  test_multiple_content_types: async () => ({
    content: [
      { type: 'text', text: 'Multiple content types test:' },
      { type: 'image', data: PNG, mimeType: 'image/png' },
      {
        type: 'resource',
        resource: {
          uri: 'test://mixed-content-resource',
          mimeType: 'application/json',
          text: JSON.stringify({ test: 'data', value: 123 }),
        },
      },
    ],
  }),
  test_error_handling: async () => ({
    isError: true,
    content: [{ type: 'text', text: 'This tool intentionally returns an error for testing' }],
  }),
  // Progress 0, 50, 100 of 100, ~50 ms apart (the worker forwards stderr progress lines to
  // callers that asked for progress).
  test_tool_with_progress: async () => {
    for (const progress of [0, 50, 100]) {
      process.stderr.write(JSON.stringify({ progress, total: 100 }) + '\n');
      if (progress < 100) await sleep(50);
    }
    return text('Progress test completed');
  },
  // The SSE polling scenario's tool: it takes a moment, so a server that closes the POST
  // stream mid-call (SEP-1699) has a call in flight to resume with Last-Event-ID.
  test_reconnection: async () => {
    await sleep(500);
    return text('Reconnection test completed');
  },
  // Listed for its input schema (json-schema-2020-12); called, it echoes its arguments.
  json_schema_2020_12_tool: async (args) => text(JSON.stringify(args)),
};

async function main() {
  const tool = tools[name];
  if (!tool) {
    process.stderr.write(`unknown conformance tool ${JSON.stringify(name)}\n`);
    process.exit(2);
  }
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const args = input.trim() === '' ? {} : JSON.parse(input);
  process.stdout.write(JSON.stringify(await tool(args)) + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e?.stack ?? e}\n`);
  process.exit(1);
});
