/**
 * A directory this process cannot write in, whoever it runs as. A user gets a new directory with
 * mode 0555; root writes through any mode, so root gets a directory of sysfs, where no file can be
 * created by anyone. Undefined when neither is at hand (a system without sysfs, run as root).
 */
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ReadOnlyDir {
  path: string;
  /** Gives a directory made here its mode back and removes it; nothing for sysfs. */
  cleanup(): void;
}

/** Directories of a read-only (for everyone) filesystem that exist on Linux. */
const SYSFS_DIRS = ['/sys/kernel', '/sys'];

export function readOnlyDir(): ReadOnlyDir | undefined {
  if (process.getuid?.() !== 0) {
    const path = mkdtempSync(join(tmpdir(), 'sbg-readonly-'));
    chmodSync(path, 0o555);
    return {
      path,
      cleanup: () => {
        chmodSync(path, 0o755);
        rmSync(path, { recursive: true, force: true });
      },
    };
  }
  for (const path of SYSFS_DIRS) {
    if (isDirectory(path) && !canCreateIn(path)) return { path, cleanup: () => undefined };
  }
  return undefined;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function canCreateIn(dir: string): boolean {
  const probe = join(dir, `.sbg-probe-${process.pid}`);
  try {
    writeFileSync(probe, '', { flag: 'wx' });
  } catch {
    return false;
  }
  rmSync(probe, { force: true });
  return true;
}
