#!/usr/bin/env node
// Checks every KQL query of the workbook (infra/app/workbook.json) and the runbook (the ```kusto and ```kql blocks
// of docs/operations.md) offline, with Kusto's own parser and analyzer (@kusto/language-service-next, the
// JavaScript build of Kusto.Language), against scripts/kql-schema.json: a query that names a table, a column or a
// field of the app's JSON log lines that the schema does not state fails.
//
//   node scripts/kql-check.mjs [--schema FILE] [--json] [FILE ...]
//
// Exit status 0 when every query is clean, 1 when one is not (each problem on stderr, or all as JSON on stdout).
// Kusto types a column of a known dynamic shape (a "dynamic bag") through extend, mv-expand, mv-apply and
// summarize, but never reports a member it does not know: this script walks the analyzed tree and checks every
// `x.member` and `x["member"]` whose left side has a known shape. parse_json(message) is given the shape of the
// app's JSON lines (the schema's json_in) by reading it from a hidden typed column instead.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DEFAULT_FILES = ["infra/app/workbook.json", "docs/operations.md"];
const ANY_MEMBER = "*"; // the one property of a `map` shape: any member may be read

const require = createRequire(import.meta.url);
require("@kusto/language-service-next/bridge.js"); // Bridge.NET's runtime, which the library needs as a global
require("@kusto/language-service-next");
const K = globalThis.Kusto.Language;
const S = K.Symbols;
const Syntax = K.Syntax;

const SCALARS = {
  string: S.ScalarTypes.String,
  int: S.ScalarTypes.Int,
  long: S.ScalarTypes.Long,
  real: S.ScalarTypes.Real,
  bool: S.ScalarTypes.Bool,
  datetime: S.ScalarTypes.DateTime,
};

function column(name, type) {
  return new S.ColumnSymbol(name, type, null, null, null, null);
}

function hiddenColumn(name) {
  return `__json_${name}`;
}

/** The schema's tables as a Kusto database, and the name of each shape's bag type (for messages). */
function loadSchema(path) {
  const schema = JSON.parse(readFileSync(path, "utf8"));
  const built = new Map();
  const names = new Map(); // bag symbol -> shape name
  const typeOf = (spec, where) => {
    if (Array.isArray(spec)) {
      if (spec.length !== 1) throw new Error(`${where}: a list type is [T]`);
      return new S.DynamicArraySymbol(typeOf(spec[0], where));
    }
    if (spec === "map") {
      return new S.DynamicBagSymbol.ctor([column(ANY_MEMBER, S.ScalarTypes.Dynamic)]);
    }
    if (SCALARS[spec]) return SCALARS[spec];
    if (schema.shapes[spec]) return shape(spec);
    throw new Error(`${where}: unknown type ${JSON.stringify(spec)}`);
  };
  const shape = (name) => {
    if (!built.has(name)) {
      const fields = Object.entries(schema.shapes[name]);
      const bag = new S.DynamicBagSymbol.ctor(fields.map(([f, spec]) => column(f, typeOf(spec, `${name}.${f}`))));
      built.set(name, bag);
      names.set(bag, name);
    }
    return built.get(name);
  };
  const union = (shapeNames) => {
    const fields = new Map();
    for (const name of shapeNames) {
      for (const [f, spec] of Object.entries(schema.shapes[name])) {
        fields.set(f, column(f, typeOf(spec, `${name}.${f}`)));
      }
    }
    const bag = new S.DynamicBagSymbol.ctor([...fields.values()]);
    names.set(bag, shapeNames.join(" or "));
    return bag;
  };
  const jsonTypes = Object.fromEntries(Object.entries(schema.json_in ?? {}).map(([c, shapes]) => [c, union(shapes)]));
  const tables = Object.entries(schema.tables).map(([table, columns]) => {
    const symbols = Object.entries(columns).map(([c, spec]) => column(c, typeOf(spec, `${table}.${c}`)));
    for (const [c, type] of Object.entries(jsonTypes)) if (c in columns) symbols.push(column(hiddenColumn(c), type));
    return new S.TableSymbol.$ctor4(table, symbols);
  });
  const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("telemetry", tables));
  return { globals, shapeName: (bag) => names.get(bag), jsonColumns: Object.keys(jsonTypes) };
}

// -- extracting the queries ----------------------------------------------------------------------------------------

/** Every query of a workbook: items with content.query (and parameters with a query), workbook parameters filled
 * in with their default values as the workbook would on opening. */
function workbookQueries(text) {
  const workbook = JSON.parse(text);
  const parameters = new Map();
  const found = [];
  const walk = (node, name) => {
    if (Array.isArray(node)) return node.forEach((child) => walk(child, name));
    if (node === null || typeof node !== "object") return;
    const here = typeof node.name === "string" ? node.name : name;
    if (Array.isArray(node.parameters)) {
      for (const p of node.parameters) if (typeof p?.name === "string") parameters.set(p.name, p.value);
    }
    if (typeof node.query === "string") found.push({ name: here, text: node.query, line: 1 });
    for (const [key, child] of Object.entries(node)) if (key !== "query") walk(child, here);
  };
  walk(workbook, "workbook");
  return found.map((q) => {
    const missing = [];
    const text = q.text.replace(/\{(\w+)(?::\w+)?\}/g, (whole, name) => {
      if (!parameters.has(name)) {
        missing.push(name);
        return whole;
      }
      const value = parameters.get(name);
      return typeof value === "object" ? JSON.stringify(value) : String(value);
    });
    return { ...q, text, problems: missing.map((m) => `names the workbook parameter {${m}}, which is not defined`) };
  });
}

/** The ```kusto and ```kql blocks of a Markdown file, each named by the line it starts on. */
function markdownQueries(text) {
  const found = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^\s*```\s*(kusto|kql)\s*$/i);
    if (!open) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !/^\s*```\s*$/.test(lines[end])) end++;
    const text = lines.slice(start, end).join("\n");
    found.push({ name: `block at line ${i + 1}`, text, line: start + 1, problems: [] });
    i = end;
  }
  return found;
}

// -- checking one query ---------------------------------------------------------------------------------------------

/** parse_json(c) or todynamic(c), of the whole column or of the JSON after a text prefix
 * (substring(c, indexof(c, "{"))), on one line. */
function jsonOf(c) {
  const _ = "[ \\t]*";
  const whole = `${c}`;
  const tail = `substring\\(${_}${c}${_},${_}indexof\\(${_}${c}${_},${_}"\\{"${_}\\)${_}\\)`;
  return new RegExp(`\\b(?:parse_json|todynamic)\\(${_}(?:${whole}|${tail})${_}\\)`, "g");
}

function memberOf(selectorText) {
  const text = selectorText.trim();
  const quoted = text.match(/^\[\s*(?:"([^"]*)"|'([^']*)')\s*\]$/);
  if (quoted) return { name: quoted[1] ?? quoted[2] };
  if (/^\[\s*-?\d+\s*\]$/.test(text)) return { index: true };
  if (text.startsWith("[")) return { computed: text };
  return { name: text };
}

function propertyNames(bag) {
  const names = [];
  for (let i = 0; i < bag.Properties.Count; i++) names.push(bag.Properties.getItem(i).Name);
  return names;
}

/** Problems of one query's text: Kusto's own errors, then every member of a known shape that the shape lacks. */
function checkQuery(text, schema) {
  let rewritten = text;
  for (const c of schema.jsonColumns) rewritten = rewritten.replace(jsonOf(c), hiddenColumn(c));
  const lineAt = (offset) => rewritten.slice(0, offset).split("\n").length;
  const code = K.KustoCode.ParseAndAnalyze(rewritten, schema.globals);
  const problems = [];
  const diagnostics = code.GetDiagnostics();
  for (let i = 0; i < diagnostics.Count; i++) {
    const d = diagnostics.getItem(i);
    if (d.Severity === "Error") problems.push({ line: lineAt(d.Start), message: `${d.Code}: ${d.Message}` });
  }
  code.Syntax.WalkElements((e) => {
    if (!(e instanceof Syntax.PathExpression || e instanceof Syntax.ElementExpression)) return;
    const left = e.Expression.ResultType;
    const leftText = e.Expression.toString().trim();
    const member = memberOf(e.Selector.toString());
    const problem = (message) => problems.push({ line: lineAt(e.TextStart), member: member.name, message });
    if (left instanceof S.DynamicBagSymbol) {
      const fields = propertyNames(left);
      if (fields.includes(ANY_MEMBER)) return;
      const shape = schema.shapeName(left) ?? "a value of known shape";
      if (member.name === undefined) {
        problem(`${leftText}${e.Selector.toString().trim()}: ${shape} is an object, read it by field name`);
      } else if (!fields.includes(member.name)) {
        const known = fields.join(", ");
        problem(`${leftText}.${member.name}: '${member.name}' is not a field of ${shape}, which has ${known}`);
      }
    } else if (left instanceof S.DynamicArraySymbol) {
      if (!member.index) {
        const wanted = member.name ?? member.computed;
        problem(`${leftText}: is a list; mv-expand it or take an element [n] before reading '${wanted}'`);
      }
    } else if (left === S.ScalarTypes.Dynamic) {
      problem(
        `${e.toString().trim()}: a member of a dynamic value of unknown shape cannot be checked; ` +
          "read it from a column or a parse_json(message) the schema describes",
      );
    }
  });
  return problems;
}

// -- the command ----------------------------------------------------------------------------------------------------

function queriesOf(path) {
  const text = readFileSync(path, "utf8");
  return path.endsWith(".json") ? workbookQueries(text) : markdownQueries(text);
}

function main(argv) {
  let schemaPath = resolve(ROOT, "scripts/kql-schema.json");
  let asJson = false;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--schema") schemaPath = resolve(argv[++i]);
    else if (argv[i] === "--json") asJson = true;
    else files.push(resolve(argv[i]));
  }
  if (files.length === 0) files.push(...DEFAULT_FILES.map((f) => resolve(ROOT, f)));
  const schema = loadSchema(schemaPath);
  const checked = [];
  const problems = [];
  for (const path of files) {
    const file = relative(process.cwd(), path) || path;
    for (const query of queriesOf(path)) {
      checked.push({ file, query: query.name });
      for (const message of query.problems) problems.push({ file, query: query.name, line: query.line, message });
      for (const p of checkQuery(query.text, schema)) {
        problems.push({ file, query: query.name, ...p, line: query.line + p.line - 1 });
      }
    }
  }
  if (asJson) {
    process.stdout.write(JSON.stringify({ checked, problems }, null, 2) + "\n");
  } else {
    for (const p of problems) process.stderr.write(`${p.file}:${p.line}: query "${p.query}": ${p.message}\n`);
    process.stdout.write(`${checked.length} KQL queries checked, ${problems.length} problem(s)\n`);
  }
  return problems.length === 0 && checked.length > 0 ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
