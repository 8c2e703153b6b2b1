/**
 * The whole `/metrics` answer of a running daemon, parsed strictly by the text exposition
 * format (version 0.0.4): every line, escapes, families contiguous, no duplicate series,
 * histograms consistent. Webhook URLs with odd characters, and two that share a label.
 */
import { request } from 'undici';
import { afterEach, expect, it } from 'vitest';
import { type Stack, startStack } from './helpers/stack.js';

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

interface Series {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseValue(text: string): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY;
  if (text === '-Inf') return Number.NEGATIVE_INFINITY;
  if (text === 'NaN') return Number.NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value ${text}`);
  return Number(text);
}

/** Parses one sample line by the grammar; throws with the line on any deviation. */
function parseSample(line: string): Series {
  let i = 0;
  const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  if (!nameMatch) throw new Error(`no metric name: ${JSON.stringify(line)}`);
  const name = nameMatch[0];
  i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === '{') {
    i++;
    while (line[i] !== '}') {
      const ln = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
      if (!ln) throw new Error(`bad label name at ${i}: ${JSON.stringify(line)}`);
      i += ln[0].length;
      if (line[i] !== '=' || line[i + 1] !== '"')
        throw new Error(`expected =" at ${i}: ${JSON.stringify(line)}`);
      i += 2;
      let value = '';
      for (;;) {
        const c = line[i];
        if (c === undefined) throw new Error(`unterminated label value: ${JSON.stringify(line)}`);
        if (c === '"') break;
        if (c === '\\') {
          const n = line[i + 1];
          if (n === '\\') value += '\\';
          else if (n === '"') value += '"';
          else if (n === 'n') value += '\n';
          else throw new Error(`bad escape \\${n}: ${JSON.stringify(line)}`);
          i += 2;
          continue;
        }
        if (c === '\n') throw new Error('raw newline in label value');
        value += c;
        i++;
      }
      i++;
      if (ln[0] in labels) throw new Error(`label ${ln[0]} twice: ${JSON.stringify(line)}`);
      labels[ln[0]] = value;
      if (line[i] === ',') i++;
      else if (line[i] !== '}') throw new Error(`expected , or } at ${i}: ${JSON.stringify(line)}`);
    }
    i++;
  }
  if (line[i] !== ' ') throw new Error(`expected one space before the value: ${JSON.stringify(line)}`);
  const rest = line.slice(i + 1).split(' ');
  if (rest.length > 2 || rest.some((p) => p === ''))
    throw new Error(`bad value/timestamp: ${JSON.stringify(line)}`);
  const value = parseValue(rest[0] as string);
  if (rest[1] !== undefined && !/^-?\d+$/.test(rest[1]))
    throw new Error(`bad timestamp: ${JSON.stringify(line)}`);
  return { name, labels, value };
}

function familyOf(sample: string, types: Map<string, string>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (sample.endsWith(suffix)) {
      const base = sample.slice(0, -suffix.length);
      if (types.get(base) === 'histogram' || types.get(base) === 'summary') return base;
    }
  }
  return sample;
}

function parseExposition(text: string): Series[] {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const seenFamilies: string[] = [];
  const series: Series[] = [];
  const keys = new Set<string>();
  let current: string | undefined;
  const lines = text.slice(0, -1).split('\n');
  for (const line of lines) {
    if (Buffer.from(line, 'utf8').toString('utf8') !== line || /[\uD800-\uDFFF]/.test(line.normalize()))
      throw new Error(`not UTF-8 clean: ${JSON.stringify(line)}`);
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!m) {
        if (/^# (HELP|TYPE)/.test(line)) throw new Error(`bad comment: ${JSON.stringify(line)}`);
        continue;
      }
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      if (!NAME.test(name)) throw new Error(`bad name in ${JSON.stringify(line)}`);
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`bad type: ${JSON.stringify(line)}`);
        if (types.has(name)) throw new Error(`TYPE twice for ${name}`);
        if (seenFamilies.includes(name)) throw new Error(`TYPE for ${name} after its samples`);
        types.set(name, rest);
      } else {
        if (helps.has(name)) throw new Error(`HELP twice for ${name}`);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, '')))
          throw new Error(`bad escape in HELP: ${JSON.stringify(line)}`);
        helps.add(name);
      }
      continue;
    }
    const s = parseSample(line);
    for (const k of Object.keys(s.labels)) if (!LABEL.test(k)) throw new Error(`bad label ${k}`);
    const family = familyOf(s.name, types);
    if (family !== current) {
      if (seenFamilies.includes(family)) throw new Error(`family ${family} not contiguous`);
      seenFamilies.push(family);
      current = family;
    }
    const key = `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`;
    if (keys.has(key)) throw new Error(`duplicate series ${key}`);
    keys.add(key);
    series.push(s);
  }
  // Histograms: cumulative buckets ending in +Inf equal to _count.
  for (const [name, type] of types) {
    if (type !== 'histogram') continue;
    const groups = new Map<string, Series[]>();
    for (const s of series.filter((x) => x.name === `${name}_bucket`)) {
      const { le, ...rest } = s.labels;
      if (le === undefined) throw new Error(`${name}_bucket without le`);
      const k = JSON.stringify(Object.entries(rest).sort());
      groups.set(k, [...(groups.get(k) ?? []), s]);
    }
    for (const [k, buckets] of groups) {
      let last = -1;
      let lastLe = Number.NEGATIVE_INFINITY;
      for (const b of buckets) {
        const le = parseValue(b.labels.le as string);
        if (!(le > lastLe)) throw new Error(`${name} buckets out of order`);
        if (b.value < last) throw new Error(`${name} buckets not cumulative`);
        last = b.value;
        lastLe = le;
      }
      if (lastLe !== Number.POSITIVE_INFINITY) throw new Error(`${name} ${k} has no +Inf bucket`);
      const count = series.find(
        (s) => s.name === `${name}_count` && JSON.stringify(Object.entries(s.labels).sort()) === k,
      );
      if (count?.value !== last) throw new Error(`${name} ${k}: _count ${count?.value} != +Inf ${last}`);
    }
  }
  return series;
}

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

it('serves an exposition a strict parser takes, line by line', async () => {
  stack = await startStack({
    sim: { timing: { pendingMs: [10, 30], runningMs: [10, 30] }, failRate: 0.3 },
    // Two endpoints that share a label (they differ in the query), with odd characters in the path.
    env: {
      WATCHER_WEBHOOK_URLS:
        'http://u:p@127.0.0.1:1/h"o\\ok/\u00e9\u{1F600}?t=1,http://127.0.0.1:1/h"o\\ok/\u00e9\u{1F600}?t=2',
    },
  });
  const ids = stack.sim.createExports(20);
  expect((await stack.post('/v1/exports', { ids })).status).toBe(202);
  await stack.daemon.scheduler.onSettled();
  const res = await request(`${stack.apiUrl}/metrics`);
  expect(res.statusCode).toBe(200);
  expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await res.body.text();
  const series = parseExposition(text);
  expect(series.length).toBeGreaterThan(50);
});
