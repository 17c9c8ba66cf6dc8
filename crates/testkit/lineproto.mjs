// The line protocol of the kit's node scripts, oidc/provider.mjs and browser/driver.mjs (their
// Rust end is crates/testkit/src/common/lineproto.rs). Once a script is ready (and has said so on
// stdout), `serve` answers each JSON object on stdin, `{"cmd": "<name>", "id": ..., ...}`, with
// one JSON line on stdout: what `commands[cmd]` returned, or {"error": "<message>"} if the line
// is not a JSON object, names no known command, or the command threw (the stack goes to stderr,
// prefixed with the script's name). The answer repeats the request's "id", if any. Blank lines
// are skipped. `serve` returns when stdin closes, for the script to shut down as it needs.

import { createInterface } from 'node:readline';

/**
 * Serves `commands` (name -> async function of the request object returning the answer object)
 * over stdin/stdout until stdin closes. `name` (say "provider.mjs") prefixes what goes to stderr.
 */
export async function serve(name, commands) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === '') continue;
    let answer;
    let id;
    try {
      const req = JSON.parse(line);
      if (req === null || typeof req !== 'object' || Array.isArray(req)) {
        throw new Error('a command is a JSON object');
      }
      id = req.id;
      const handler = Object.hasOwn(commands, req.cmd) ? commands[req.cmd] : undefined;
      if (handler === undefined) {
        throw new Error(`unknown cmd ${JSON.stringify(req.cmd)}; known: ${Object.keys(commands).join(', ')}`);
      }
      answer = await handler(req);
    } catch (err) {
      process.stderr.write(`${name}: ${line}: ${err?.stack ?? err}\n`);
      answer = { error: String(err?.message ?? err) };
    }
    if (id !== undefined) answer.id = id;
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  }
}
