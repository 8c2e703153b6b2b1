/**
 * The name a misspelt one was most likely meant to be, for "did you mean ...?" hints: a variable
 * the program does not read, a flag a command does not take.
 */

/** The candidate closest to `name` within `maxDistance` edits (the first of equals), if any. */
export function nearestName(name: string, candidates: Iterable<string>, maxDistance = 3): string | undefined {
  let nearest: { name: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    if (distance <= maxDistance && (nearest === undefined || distance < nearest.distance)) {
      nearest = { name: candidate, distance };
    }
  }
  return nearest?.name;
}

/** Levenshtein distance: insertions, deletions and substitutions of one character each. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] as number;
}
