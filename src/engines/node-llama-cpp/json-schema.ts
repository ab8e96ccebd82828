/**
 * A JSON schema as clients send it (OpenAI's tools and `response_format`) turned into the
 * subset node-llama-cpp compiles to a grammar (its `GbnfJsonSchema`), so generated JSON is
 * valid for the schema by construction (pure).
 *
 * What the grammar enforces: `type` (one or several), `enum`, `const`, `anyOf`/`oneOf`,
 * `properties`, `additionalProperties`, `minProperties`/`maxProperties`, `items`,
 * `prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`, the formats `date`, `time`
 * and `date-time`, and `$ref` to `#/$defs/…` or `#/definitions/…`. Every property listed is
 * generated (a subset of what `required` allows: always valid). Annotations (`title`,
 * `description`, `default`, `examples`, …) are dropped.
 *
 * What it cannot enforce (`pattern`, `minimum`, `multipleOf`, `allOf`, `not`, other formats,
 * …): refused under `strict` — a strict schema promises valid output — and otherwise left out,
 * as OpenAI does for non-strict schemas (the JSON is still valid for the rest of the schema).
 */
import { KvKeepError } from "../../errors.js";

/** node-llama-cpp's `GbnfJsonSchema`, as plain JSON (kvkeep does not depend on its types here). */
export type GrammarSchema = { readonly [key: string]: unknown };

const UNENFORCEABLE = new Set([
  "pattern",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
  "multipleOf",
  "allOf",
  "not",
  "if",
  "then",
  "else",
  "patternProperties",
  "propertyNames",
  "uniqueItems",
  "contains",
  "minContains",
  "maxContains",
  "dependentRequired",
  "dependentSchemas",
  "dependencies",
  "unevaluatedProperties",
  "unevaluatedItems",
  "contentEncoding",
  "contentMediaType",
]);
const FORMATS = new Set(["date", "time", "date-time"]);
const TYPES = new Set(["string", "number", "integer", "boolean", "null", "object", "array"]);
/** Deeper than this is refused: node-llama-cpp stops at 512 scopes; a schema this deep is a mistake or an attack. */
const MAX_DEPTH = 64;

export interface SchemaContext {
  /** Refuse what the grammar cannot enforce (else leave it out). */
  strict: boolean;
  /** The argument errors name (`tools`, `responseFormat`). */
  argument: string;
  /** Where the schema sits, for messages (`tools[0].params`). */
  path: string;
}

class Converter {
  constructor(private readonly context: SchemaContext) {}

  fail(path: string, message: string): never {
    throw new KvKeepError("INVALID_ARGUMENT", `${this.context.path}${path}: ${message}`, { argument: this.context.argument });
  }

  convert(schema: unknown, path: string, depth: number): GrammarSchema {
    if (depth > MAX_DEPTH) this.fail(path, `the schema nests deeper than ${MAX_DEPTH} levels.`);
    if (schema === true || (isObject(schema) && Object.keys(schema).every((k) => !this.meaningful(k)))) return anyJson();
    if (schema === false) this.fail(path, "a schema of false allows no value.");
    if (!isObject(schema)) this.fail(path, "a schema must be an object.");
    for (const key of Object.keys(schema)) {
      if (UNENFORCEABLE.has(key) && this.context.strict) {
        this.fail(`${path}.${key}`, `"${key}" cannot be enforced by kvkeep's grammar, so a strict schema cannot promise it; drop it, or send strict: false (then it is ignored).`);
      }
    }
    const description = typeof schema.description === "string" ? { description: schema.description } : {};
    const defs = this.defs(schema, path, depth);

    if (schema.$ref !== undefined) {
      if (typeof schema.$ref !== "string") this.fail(`${path}.$ref`, "must be a string.");
      const ref = schema.$ref.replace(/^#\/definitions\//, "#/$defs/");
      if (!ref.startsWith("#/$defs/")) this.fail(`${path}.$ref`, `only references to "#/$defs/NAME" or "#/definitions/NAME" are supported, not ${JSON.stringify(schema.$ref)}.`);
      return { $ref: ref, ...description, ...defs };
    }
    if (schema.const !== undefined) return { const: this.literal(schema.const, `${path}.const`), ...description };
    if (schema.enum !== undefined) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) this.fail(`${path}.enum`, "must be a non-empty array.");
      return { enum: schema.enum.map((v, i) => this.literal(v, `${path}.enum[${i}]`)), ...description };
    }
    const alternatives = schema.anyOf ?? schema.oneOf;
    if (alternatives !== undefined) {
      const key = schema.anyOf !== undefined ? "anyOf" : "oneOf";
      if (!Array.isArray(alternatives) || alternatives.length === 0) this.fail(`${path}.${key}`, "must be a non-empty array.");
      return { oneOf: alternatives.map((s, i) => this.convert(s, `${path}.${key}[${i}]`, depth + 1)), ...description, ...defs };
    }

    let types: string[];
    if (schema.type === undefined) {
      // No type: what the keywords present imply (properties → object, items → array), else any value.
      if (schema.properties !== undefined || schema.additionalProperties !== undefined) types = ["object"];
      else if (schema.items !== undefined || schema.prefixItems !== undefined) types = ["array"];
      else return anyJson();
    } else {
      types = Array.isArray(schema.type) ? [...schema.type] : [schema.type as string];
      for (const t of types) if (typeof t !== "string" || !TYPES.has(t)) this.fail(`${path}.type`, `unknown type ${JSON.stringify(t)}.`);
      if (types.length === 0) this.fail(`${path}.type`, "must name at least one type.");
    }
    const parts = [...new Set(types)].map((t) => this.ofType(t, schema, path, depth));
    if (parts.length === 1) return { ...parts[0], ...description, ...defs };
    // Several types: the basic ones share one `type` list, objects and arrays are alternatives.
    const basic = parts.filter((p) => typeof p.type === "string" && !("minLength" in p || "maxLength" in p || "format" in p) && p.type !== "object" && p.type !== "array");
    const others = parts.filter((p) => !basic.includes(p));
    const merged = basic.length > 0 ? [{ type: basic.map((p) => p.type as string) }, ...others] : others;
    return merged.length === 1 ? { ...merged[0], ...description, ...defs } : { oneOf: merged, ...description, ...defs };
  }

  ofType(type: string, schema: Record<string, unknown>, path: string, depth: number): GrammarSchema {
    switch (type) {
      case "object": {
        const out: Record<string, unknown> = { type: "object" };
        if (schema.properties !== undefined) {
          if (!isObject(schema.properties)) this.fail(`${path}.properties`, "must be an object.");
          out.properties = Object.fromEntries(
            Object.entries(schema.properties).map(([name, s]) => [name, this.convert(s, `${path}.properties.${name}`, depth + 1)]),
          );
        }
        if (schema.required !== undefined) {
          if (!Array.isArray(schema.required) || schema.required.some((r) => typeof r !== "string")) this.fail(`${path}.required`, "must be an array of property names.");
          const props = isObject(schema.properties) ? schema.properties : {};
          const unknown = schema.required.find((r) => !Object.hasOwn(props, r as string));
          // A required property no schema describes would be missing from every generated object.
          if (unknown !== undefined && (schema.additionalProperties === false || schema.additionalProperties === undefined)) {
            this.fail(`${path}.required`, `"${String(unknown)}" is required but not among the properties.`);
          }
        }
        const additional = schema.additionalProperties;
        if (additional === true || (additional === undefined && schema.properties === undefined)) out.additionalProperties = true;
        else if (isObject(additional)) out.additionalProperties = this.convert(additional, `${path}.additionalProperties`, depth + 1);
        for (const key of ["minProperties", "maxProperties"] as const) {
          if (schema[key] !== undefined) out[key] = this.count(schema[key], `${path}.${key}`);
        }
        return out;
      }
      case "array": {
        const out: Record<string, unknown> = { type: "array" };
        if (schema.items !== undefined && schema.items !== true) out.items = this.convert(schema.items, `${path}.items`, depth + 1);
        if (schema.prefixItems !== undefined) {
          if (!Array.isArray(schema.prefixItems)) this.fail(`${path}.prefixItems`, "must be an array.");
          out.prefixItems = schema.prefixItems.map((s, i) => this.convert(s, `${path}.prefixItems[${i}]`, depth + 1));
        }
        for (const key of ["minItems", "maxItems"] as const) {
          if (schema[key] !== undefined) out[key] = this.count(schema[key], `${path}.${key}`);
        }
        return out;
      }
      case "string": {
        if (schema.format !== undefined) {
          if (typeof schema.format === "string" && FORMATS.has(schema.format)) return { type: "string", format: schema.format };
          if (this.context.strict) this.fail(`${path}.format`, `the format ${JSON.stringify(schema.format)} cannot be enforced (only date, time and date-time); drop it, or send strict: false.`);
        }
        const out: Record<string, unknown> = { type: "string" };
        for (const key of ["minLength", "maxLength"] as const) {
          if (schema[key] !== undefined) out[key] = this.count(schema[key], `${path}.${key}`);
        }
        return out;
      }
      default:
        return { type };
    }
  }

  defs(schema: Record<string, unknown>, path: string, depth: number): GrammarSchema {
    const all: Record<string, unknown> = {};
    for (const key of ["$defs", "definitions"] as const) {
      const defs = schema[key];
      if (defs === undefined) continue;
      if (!isObject(defs)) this.fail(`${path}.${key}`, "must be an object.");
      for (const [name, s] of Object.entries(defs)) all[name] = this.convert(s, `${path}.${key}.${name}`, depth + 1);
    }
    return Object.keys(all).length > 0 ? { $defs: all } : {};
  }

  literal(value: unknown, path: string): string | number | boolean | null {
    if (value === null || typeof value === "string" || typeof value === "boolean" || (typeof value === "number" && Number.isFinite(value))) return value;
    return this.fail(path, "only strings, numbers, booleans and null are supported as constants.");
  }

  count(value: unknown, path: string): number {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) this.fail(path, "must be a non-negative integer.");
    return value;
  }

  /** Whether a keyword constrains values (else it is an annotation, or one the grammar ignores when not strict). */
  meaningful(key: string): boolean {
    return (
      ["type", "enum", "const", "anyOf", "oneOf", "$ref", "properties", "additionalProperties", "items", "prefixItems", "required"].includes(key) ||
      (this.context.strict && UNENFORCEABLE.has(key))
    );
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Any JSON value. */
function anyJson(): GrammarSchema {
  return { oneOf: [{ type: ["string", "number", "boolean", "null"] }, { type: "object", additionalProperties: true }, { type: "array" }] };
}

/** The grammar subset of `schema`; throws INVALID_ARGUMENT (naming `context.argument`) for what cannot be honoured. */
export function toGrammarSchema(schema: unknown, context: SchemaContext): GrammarSchema {
  return new Converter(context).convert(schema, "", 0);
}
