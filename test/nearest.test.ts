import { describe, expect, it } from 'vitest';
import { editDistance, nearestName } from '../src/shared/nearest.js';

describe('nearestName', () => {
  it('counts a swap of neighbours as one edit, and keeps to the distance asked', () => {
    expect(editDistance('prot', 'port')).toBe(1);
    expect(editDistance('WATCHER_WEBHOOK_URL', 'WATCHER_WEBHOOK_URLS')).toBe(1);
    expect(editDistance('', 'abc')).toBe(3);
    expect(nearestName('prot', ['port', 'json'], 1)).toBe('port');
    expect(nearestName('host', ['port'], 1)).toBeUndefined();
    expect(nearestName('jsn', ['json', 'kind'], 1)).toBe('json');
  });
});
