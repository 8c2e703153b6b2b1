/**
 * The signals that stop a command: Ctrl-C (SIGINT), a stop (SIGTERM), and a closed terminal or
 * ended session (SIGHUP). Each command handles all three alike, so that none of them ends the
 * process by the signal's default action, which skips the command's stop: `run` would not drain
 * (its state is on disk either way), `watch` would not say what was left undelivered.
 *
 * Node resets every signal's disposition when it starts, so `nohup` never kept a Node process
 * alive on a hang-up; handling SIGHUP takes nothing away from it.
 */
import { constants } from 'node:os';
import { flushLogLines } from '../shared/log.js';

const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Set once a SIGHUP came: the process then ends by that signal (see `exitProcess`). */
let hungUp = false;
/** Set once `terminalHungUp` raised a SIGHUP for a hang-up that came without one. */
let hangUpRaised = false;

export interface StopSignalOptions {
  /** Called, instead of `handler`, for a SIGHUP after the first: the same hang-up, told twice. */
  onHangUpAgain?: () => void;
}

/**
 * Calls `handler` on each stop signal until the returned function is called. A SIGHUP after the
 * first is not passed on: one hang-up often comes twice (an interactive bash forwards it to its
 * foreground job, then the kernel sends it again to that job's process group when bash exits),
 * and must not count as a second signal, which would cut the stop short.
 */
export function onStopSignals(
  handler: (signal: NodeJS.Signals) => void,
  options: StopSignalOptions = {},
): () => void {
  const handle = (signal: NodeJS.Signals): void => {
    if (signal === 'SIGHUP') {
      if (hungUp) {
        options.onHangUpAgain?.();
        return;
      }
      hungUp = true;
    }
    handler(signal);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, handle);
  return () => {
    for (const signal of STOP_SIGNALS) process.off(signal, handle);
  };
}

/**
 * The terminal of a standard stream hung up (a write failed with EIO) but no SIGHUP came (the
 * terminal is not the process's controlling one: a job its shell did not tell). Raises one, so
 * that the command stops as on a hang-up rather than run on writing nowhere, then ends by SIGHUP
 * (Node's own exit would abort restoring the terminal's mode).
 */
export function terminalHungUp(): void {
  if (hungUp || hangUpRaised) return;
  hangUpRaised = true;
  process.kill(process.pid, 'SIGHUP');
}

/**
 * Ends the process with `code`; after a SIGHUP, by SIGHUP itself (a shell reports 129), once the
 * command has stopped. A hung-up terminal cannot be written to nor have its mode restored, and
 * Node's exit restores it (in Node 20 it aborts the process there); a signal's default action
 * ends the process without that step, and tells the parent what happened.
 */
export function exitProcess(code: number): void {
  if (hungUp) {
    // The signal skips the exit handlers: log lines still held go now. Only lines bound for a pipe
    // or a file are held (a terminal gets pretty lines, one write each).
    flushLogLines();
    process.removeAllListeners('SIGHUP');
    process.kill(process.pid, 'SIGHUP');
    return;
  }
  process.exit(code);
}

/**
 * A write to `stream` failed because its terminal hung up (EIO on a terminal), or was made after
 * that: nothing more can be shown there, and the command's stop must go on without it. EIO on a
 * file or a pipe is a real failure, not this.
 */
export function isHungUpTerminal(
  stream: { readonly isTTY?: boolean },
  error: NodeJS.ErrnoException,
): boolean {
  return stream.isTTY === true && (error.code === 'EIO' || error.code === 'ERR_STREAM_DESTROYED');
}

/** The exit code that reports a stop by `signal`, as shells report it: 128 + its number (SIGINT 130). */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + constants.signals[signal];
}
