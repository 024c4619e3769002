// Interactive docs for this API, rendered from its own OpenAPI 3.1 document.
// Vanilla JS, no network access except this server: the spec and the calls the reader makes.
"use strict";

const SPEC_URL = "/api/openapi.json";
const KEY_STORAGE = "controlplane.docs.apiKey";
const METHODS = ["get", "post", "put", "patch", "delete"];
let spec = null;

// h("div", {class: "x", onclick: f}, child, "text", [more]) builds a DOM node; text is never HTML.
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "value") node.value = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Descriptions use `code` spans; show them as code, everything else as plain text.
function inline(text) {
  return String(text || "").split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
}

function prose(text) {
  return text ? h("p", { class: "prose" }, inline(text)) : null;
}

// JSON Schema allows `true`/`false` as schemas (`additionalProperties: true`): treat them as {}.
function plain(schema) {
  return schema && typeof schema === "object" ? schema : {};
}

function resolve(schema) {
  schema = plain(schema);
  const seen = new Set();
  while (schema && schema.$ref) {
    if (seen.has(schema.$ref)) break;
    seen.add(schema.$ref);
    const prefix = "#/components/schemas/";
    if (!schema.$ref.startsWith(prefix)) return { description: "unresolved " + schema.$ref };
    const target = (spec.components.schemas || {})[schema.$ref.slice(prefix.length)];
    if (!target) return { description: "unresolved " + schema.$ref };
    schema = plain(target);
  }
  return schema;
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

// A one-line type: "string (uuid)", "ProjectOut[]", "string | null", "\"a\" | \"b\"".
function typeLabel(schema) {
  schema = plain(schema);
  if (schema.$ref) return refName(schema);
  const variants = schema.anyOf || schema.oneOf;
  if (variants) return variants.map(typeLabel).join(" | ");
  if (schema.allOf) return schema.allOf.map(typeLabel).join(" & ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if ("const" in schema) return JSON.stringify(schema.const);
  if (schema.type === "array") return typeLabel(schema.items) + "[]";
  if (schema.type === "object" && !schema.properties) {
    return "{[key]: " + typeLabel(schema.additionalProperties) + "}";
  }
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  return schema.format ? `${type} (${schema.format})` : type;
}

function constraints(schema) {
  schema = plain(schema);
  const out = [];
  for (const [key, label] of [["minLength", "min length"], ["maxLength", "max length"],
    ["minimum", "≥"], ["maximum", "≤"], ["pattern", "pattern"], ["minItems", "min items"]]) {
    if (key in schema) out.push(`${label} ${schema[key]}`);
  }
  if ("default" in schema) out.push("default " + JSON.stringify(schema.default));
  return out.join(", ");
}

// The schema as a nested list of fields; `depth` stops runaway recursion on cyclic models.
function schemaView(schema, depth = 0) {
  const named = refName(schema);
  const target = resolve(schema);
  const wrap = h("div", { class: "schema" });
  if (named) wrap.append(h("div", { class: "schema-name" }, named));
  if (target.description && depth === 0) wrap.append(prose(target.description));
  const nested = nestedObject(target);
  if (!nested || depth > 4) {
    wrap.append(h("code", { class: "type" }, typeLabel(schema)));
    return wrap;
  }
  const required = new Set(nested.required || []);
  const rows = Object.entries(nested.properties || {}).map(([name, prop]) => {
    const inner = nestedObject(resolve(prop));
    const child = inner && depth < 4 ? schemaView(prop, depth + 1) : null;
    return h("li", {},
      h("span", { class: "field" }, name),
      required.has(name) ? h("span", { class: "req" }, "required") : null,
      h("code", { class: "type" }, typeLabel(prop)),
      h("span", { class: "constraints" }, constraints(resolve(prop))),
      prop.description || resolve(prop).description
        ? h("div", { class: "desc" }, prop.description || resolve(prop).description) : null,
      child);
  });
  wrap.append(h("ul", { class: "fields" }, rows));
  return wrap;
}

// The object schema to expand: the object itself, an array's items, or a nullable's object arm.
function nestedObject(schema) {
  if (schema.type === "object" && schema.properties) return schema;
  if (schema.type === "array" && schema.items) return nestedObject(resolve(schema.items));
  for (const variant of schema.anyOf || schema.oneOf || []) {
    const found = nestedObject(resolve(variant));
    if (found) return found;
  }
  return null;
}

// A plausible value for a schema, used to prefill request bodies.
function example(schema, depth = 0) {
  schema = resolve(schema);
  if ("example" in schema) return schema.example;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if ("default" in schema) return schema.default;
  if ("const" in schema) return schema.const;
  if (schema.enum) return schema.enum[0];
  const variants = schema.anyOf || schema.oneOf;
  if (variants) {
    const useful = variants.find((v) => resolve(v).type !== "null") || variants[0];
    return example(useful, depth);
  }
  if (schema.allOf) return Object.assign({}, ...schema.allOf.map((s) => example(s, depth)));
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (depth > 5) return null;
  switch (type) {
    case "object": {
      const value = {};
      const required = new Set(schema.required || []);
      for (const [name, prop] of Object.entries(schema.properties || {})) {
        // An optional list starts empty rather than holding a made-up item.
        const optionalList = !required.has(name) && resolve(prop).type === "array";
        value[name] = optionalList && !("default" in resolve(prop)) ? [] : example(prop, depth + 1);
      }
      return value;
    }
    case "array": return schema.items ? [example(schema.items, depth + 1)] : [];
    case "integer": case "number": return schema.minimum ?? 0;
    case "boolean": return false;
    case "null": return null;
    case "string": return stringExample(schema);
    default: return null;
  }
}

function stringExample(schema) {
  const byFormat = {
    uuid: "00000000-0000-0000-0000-000000000000",
    "date-time": new Date().toISOString(),
    date: new Date().toISOString().slice(0, 10),
    email: "user@example.org",
    uri: "/api/health",
  };
  if (schema.format in byFormat) return byFormat[schema.format];
  const title = (schema.title || "value").toLowerCase();
  let pattern = null;
  try {
    pattern = schema.pattern ? new RegExp(schema.pattern, "u") : null;
  } catch (_) { /* a pattern JS cannot read: skip the check */ }
  const candidates = [title.replace(/[^a-z0-9]+/g, "-"), title.replace(/[^a-z0-9]+/g, "_"),
    title.replace(/[^a-z]+/g, ""), title.toUpperCase().replace(/[^A-Z0-9]+/g, "_"), "x", "X", "0"];
  const sized = candidates.map((value) => {
    while (value.length < (schema.minLength || 0)) value += value.slice(-1) || "x";
    return schema.maxLength ? value.slice(0, schema.maxLength) : value;
  });
  return sized.find((value) => !pattern || pattern.test(value)) || sized[0];
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function paramsTable(params) {
  if (!params.length) return null;
  return h("table", { class: "params" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "In"), h("th", {}, "Type"),
      h("th", {}, "Description"))),
    h("tbody", {}, params.map((p) => h("tr", {},
      h("td", {}, h("span", { class: "field" }, p.name),
        p.required ? h("span", { class: "req" }, "required") : null),
      h("td", {}, p.in),
      h("td", {}, h("code", { class: "type" }, typeLabel(p.schema)),
        h("span", { class: "constraints" }, constraints(resolve(p.schema || {})))),
      h("td", {}, p.description || "")))));
}

function responsesView(responses) {
  return h("div", { class: "responses" }, Object.entries(responses || {}).map(([status, r]) => {
    const media = (r.content || {})["application/json"];
    const ok = status.startsWith("2");
    return h("details", { class: "response", open: ok },
      h("summary", {}, h("span", { class: `status s${status[0]}` }, status), " ", r.description),
      media && media.schema ? schemaView(media.schema) : h("div", { class: "muted" }, "No body"));
  }));
}

function tryIt(path, method, op) {
  const params = op.parameters || [];
  const inputs = {};
  const fields = params.filter((p) => p.in === "path" || p.in === "query").map((p) => {
    const dflt = (p.schema || {}).default;
    inputs[p.name] = h("input", {
      type: "text", name: p.name, required: p.required,
      placeholder: dflt === undefined || dflt === null ? p.in : String(dflt),
    });
    return h("label", {}, h("span", {}, `${p.name} (${p.in})`), inputs[p.name]);
  });
  const media = op.requestBody && (op.requestBody.content || {})["application/json"];
  const body = media ? h("textarea", { rows: 10, spellcheck: "false", class: "body" },
    JSON.stringify(example(media.schema), null, 2)) : null;
  const output = h("div", { class: "output" });
  const curl = h("pre", { class: "curl" });

  function request() {
    const url = path.replace(/{([^}]+)}/g, (_, name) =>
      encodeURIComponent(inputs[name] ? inputs[name].value.trim() : ""));
    const query = new URLSearchParams();
    for (const p of params) {
      const value = p.in === "query" ? inputs[p.name].value.trim() : "";
      if (value) query.set(p.name, value);
    }
    const headers = { Accept: "application/json" };
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    if (body) headers["Content-Type"] = "application/json";
    return { url: url + (query.toString() ? "?" + query : ""), headers };
  }

  function showCurl() {
    const { url, headers } = request();
    const parts = [`curl -X ${method.toUpperCase()} '${location.origin}${url}'`];
    for (const [name, value] of Object.entries(headers)) {
      parts.push(`-H '${name}: ${name === "Authorization" ? "Bearer $API_KEY" : value}'`);
    }
    if (body) parts.push(`-d '${body.value.replace(/'/g, "'\\''")}'`);
    curl.textContent = parts.join(" \\\n  ");
  }

  async function send(event) {
    event.preventDefault();
    const { url, headers } = request();
    let payload;
    if (body) {
      try {
        payload = JSON.stringify(JSON.parse(body.value || "{}"));
      } catch (err) {
        output.replaceChildren(h("div", { class: "error" }, "Body is not valid JSON: " + err.message));
        return;
      }
    }
    output.replaceChildren(h("div", { class: "muted" }, "Sending…"));
    const started = performance.now();
    try {
      const response = await fetch(url, { method: method.toUpperCase(), headers, body: payload });
      const text = await response.text();
      const elapsed = Math.round(performance.now() - started);
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
      output.replaceChildren(
        h("div", { class: `status-line s${String(response.status)[0]}` },
          `${response.status} ${response.statusText} · ${elapsed} ms`),
        h("pre", { class: "headers" },
          [...response.headers].map(([name, value]) => `${name}: ${value}`).join("\n")),
        h("pre", { class: "response-body" }, shown || "(empty body)"));
    } catch (err) {
      output.replaceChildren(h("div", { class: "error" }, "Request failed: " + err.message));
    }
  }

  const form = h("form", { class: "try", onsubmit: send, oninput: showCurl },
    h("h4", {}, "Try it"),
    op.security && !apiKey() ? h("div", { class: "muted" }, "Set an API key above first.") : null,
    fields.length ? h("div", { class: "inputs" }, fields) : null,
    body ? h("label", { class: "body-label" }, h("span", {}, "JSON body"), body) : null,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Send"),
      h("button", { type: "button", class: "secondary", onclick: showCurl }, "Show curl")),
    curl, output);
  return form;
}

function operationView(path, method, op) {
  const id = op.operationId || `${method}-${path}`;
  const node = h("details", { class: "op", id },
    h("summary", {},
      h("span", { class: `method m-${method}` }, method.toUpperCase()),
      h("span", { class: "path" }, path),
      h("span", { class: "summary" }, inline(op.summary)),
      op.security ? h("span", { class: "lock", title: "Needs an API key" }, "key") : null),
    h("div", { class: "op-body" },
      prose(op.description),
      (op.parameters || []).length ? h("h4", {}, "Parameters") : null,
      paramsTable(op.parameters || []),
      op.requestBody ? h("h4", {}, "Request body") : null,
      op.requestBody ? schemaView(op.requestBody.content["application/json"].schema) : null,
      h("h4", {}, "Responses"),
      responsesView(op.responses)));
  // Build the form on first open: a page with every form prefilled would be slow to load.
  node.addEventListener("toggle", () => {
    if (node.open && !node.dataset.ready) {
      node.dataset.ready = "1";
      node.querySelector(".op-body").append(tryIt(path, method, op));
    }
    if (node.open) history.replaceState(null, "", "#" + id);
  });
  node.dataset.search = `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}`
    .toLowerCase();
  return node;
}

function render() {
  const groups = new Map();
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operationView(path, method, item[method]));
    }
  }
  const nav = h("nav", {}, [...groups.keys()].map((tag) => h("a", { href: "#tag-" + tag }, tag)));
  const sections = [...groups].map(([tag, ops]) =>
    h("section", { class: "tag", id: "tag-" + tag }, h("h2", {}, tag), ops));
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  const intro = document.getElementById("intro");
  intro.replaceChildren(prose(spec.info.description) || "");
  document.getElementById("content").replaceChildren(nav, ...sections);
  openFromHash();
  window.addEventListener("hashchange", openFromHash);
}

function openFromHash() {
  const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (target && target.tagName === "DETAILS") {
    target.open = true;
    target.scrollIntoView();
  }
}

function setupKey() {
  const input = document.getElementById("api-key");
  input.value = apiKey();
  input.addEventListener("change", () => {
    const value = input.value.trim();
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  });
  document.getElementById("show-key").addEventListener("click", () => {
    input.type = input.type === "password" ? "text" : "password";
  });
  document.getElementById("filter").addEventListener("input", (event) => {
    const words = event.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const op of document.querySelectorAll("details.op")) {
      op.hidden = !words.every((w) => op.dataset.search.includes(w));
    }
    for (const section of document.querySelectorAll("section.tag")) {
      section.hidden = !section.querySelector("details.op:not([hidden])");
    }
  });
}

async function main() {
  setupKey();
  try {
    const response = await fetch(SPEC_URL, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${SPEC_URL} answered ${response.status}`);
    spec = await response.json();
    render();
  } catch (err) {
    document.getElementById("content").replaceChildren(
      h("div", { class: "error" }, "Could not load the API description: " + err.message));
  }
}

// In a browser, render; under node (the tests), expose the schema helpers instead.
if (typeof module === "object" && module.exports) {
  module.exports = { useSpec: (value) => { spec = value; }, example, typeLabel };
} else {
  main();
}
