/**
 * Places this process cannot use, whoever it runs as. Root reads and writes through any file
 * mode, so for root they come from sysfs, which refuses new files to everyone and has write-only
 * attributes that no one can read. Where neither a mode nor sysfs can do it (a system without
 * sysfs, run as root), the helpers say so and the test is skipped.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const isRoot = process.getuid?.() === 0;

export interface ReadOnlyDir {
  path: string;
  /** Gives a directory made here its mode back and removes it; nothing for sysfs. */
  cleanup(): void;
}

/** Directories of a read-only (for everyone) filesystem that exist on Linux. */
const SYSFS_DIRS = ['/sys/kernel', '/sys'];
const sysfsDir = isRoot ? SYSFS_DIRS.find((d) => isDirectory(d) && !canCreateIn(d)) : undefined;

/** Whether `readOnlyDir` can work here. */
export const canMakeReadOnlyDir = !isRoot || sysfsDir !== undefined;

/**
 * A directory this process cannot write in: a new one with mode 0555 for a user, a sysfs directory
 * for root. Call it in the test that uses it, and `cleanup` after.
 */
export function readOnlyDir(): ReadOnlyDir {
  if (!isRoot) {
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
  if (sysfsDir === undefined)
    throw new Error('no read-only directory at hand: check canMakeReadOnlyDir first');
  return { path: sysfsDir, cleanup: () => undefined };
}

/** Write-only sysfs attributes that every Linux with sysfs has (every bus has a `uevent`). */
const WRITE_ONLY_SYSFS_FILES = ['/sys/bus/platform/uevent', '/sys/bus/cpu/uevent'];

const writeOnlyFile = isRoot ? WRITE_ONLY_SYSFS_FILES.find((f) => !canRead(f)) : undefined;

/** Whether `makeUnreadable` can work here. */
export const canMakeUnreadable = !isRoot || writeOnlyFile !== undefined;

/**
 * Makes the file at `path` one this process cannot read: mode 0000 for a user; for root, the file
 * is replaced by a symbolic link to a write-only sysfs attribute (a regular file, EACCES to read).
 */
export function makeUnreadable(path: string): void {
  if (!isRoot) {
    chmodSync(path, 0o000);
    return;
  }
  if (writeOnlyFile === undefined)
    throw new Error('no unreadable file at hand: check canMakeUnreadable first');
  rmSync(path);
  symlinkSync(writeOnlyFile, path);
}

/**
 * Makes the existing file at `path` one this process can read but not write: mode 0444 for a user;
 * for root, the immutable attribute (`chattr +i`, where the filesystem and capabilities allow).
 * Returns what gives it back, or undefined when this system cannot (the test is then skipped).
 */
export function makeUnwritable(path: string): (() => void) | undefined {
  if (!isRoot) {
    chmodSync(path, 0o444);
    return () => chmodSync(path, 0o644);
  }
  try {
    execFileSync('chattr', ['+i', path], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  return () => execFileSync('chattr', ['-i', path], { stdio: 'ignore' });
}

function canRead(path: string): boolean {
  try {
    readFileSync(path);
    return true;
  } catch {
    return false;
  }
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
