// Validates an AsyncAPI document with AsyncAPI's own parser: the JSON Schema of the spec
// version and the parser's rules. Exits 1 on any error (warnings are printed only).
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"));
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics) {
  const level = d.severity === DiagnosticSeverity.Error ? "error" : "warning";
  console.log(`${path}: ${level} ${d.code} at ${d.path.join("/")}: ${d.message}`);
}
if (!document || errors.length) {
  console.log(`${path}: ${errors.length} error(s)`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()}`);
