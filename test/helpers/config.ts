/** Configuration as tests read it. */
import { expect } from 'vitest';
import { ConfigError } from '../../src/shared/errors.js';

/** The problem lines of the ConfigError `load` throws; fails the test if it throws none (or another error). */
export function configProblems(load: () => unknown, what: string): string[] {
  try {
    load();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return [...(error as ConfigError).problems];
  }
  throw new Error(`expected a ConfigError for ${what}`);
}
