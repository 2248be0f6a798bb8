/**
 * Prints the size of the browser bundle (dist/switchboard.min.js), raw and gzipped (level 9),
 * after `npm run build`: the number the README quotes.
 */
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const bytes = readFileSync(new URL("../dist/switchboard.min.js", import.meta.url));
const gz = gzipSync(bytes, { level: 9 }).length;
console.log(`dist/switchboard.min.js: ${bytes.length} bytes, ${gz} bytes gzipped`);
