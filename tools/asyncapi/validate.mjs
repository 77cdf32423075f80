// Parse an AsyncAPI document with the official parser; print every diagnostic and exit 1 on any
// error or warning, 2 on bad usage. Used by tests/unit/test_contracts.py.
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs <asyncapi.yaml>');
  process.exit(2);
}
const SEVERITY = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
let bad = 0;
for (const d of diagnostics) {
  const severity = SEVERITY[d.severity] ?? String(d.severity);
  if (d.severity <= 1) bad += 1;
  console.log(`${severity}: ${d.code}: ${d.message} at /${d.path.join('/')}`);
}
if (!document || bad) {
  console.error(`${path}: ${bad} error(s) or warning(s)`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()}`);
console.log(`addresses: ${document.channels().all().map((c) => c.address()).join(' ')}`);
