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

export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export type StopSignal = (typeof STOP_SIGNALS)[number];

/** Set once a SIGHUP came: the process then ends by that signal (see `exitProcess`). */
let hungUp = false;

/** Calls `handler` on each stop signal until the returned function is called. */
export function onStopSignals(handler: (signal: NodeJS.Signals) => void): () => void {
  const handle = (signal: NodeJS.Signals): void => {
    if (signal === 'SIGHUP') hungUp = true;
    handler(signal);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, handle);
  return () => {
    for (const signal of STOP_SIGNALS) process.off(signal, handle);
  };
}

/**
 * Ends the process with `code`; after a SIGHUP, by SIGHUP itself (a shell reports 129), once the
 * command has stopped. A hung-up terminal cannot be written to nor have its mode restored, and
 * Node's exit restores it (in Node 20 it aborts the process there); a signal's default action
 * ends the process without that step, and tells the parent what happened.
 */
export function exitProcess(code: number): void {
  if (hungUp) {
    process.removeAllListeners('SIGHUP');
    process.kill(process.pid, 'SIGHUP');
    return;
  }
  process.exit(code);
}

/**
 * A standard stream's write failed because its terminal hung up (EIO), or was made after that:
 * nothing more can be shown there, and the command's stop must go on without it.
 */
export function isHungUpTerminal(error: NodeJS.ErrnoException): boolean {
  return error.code === 'EIO' || error.code === 'ERR_STREAM_DESTROYED';
}

/** The exit code that reports a stop by `signal`, as shells report it: 128 + its number (SIGINT 130). */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + constants.signals[signal];
}
