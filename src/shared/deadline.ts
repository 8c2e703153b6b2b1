/**
 * Waiting for something with a deadline: start-up, shutdown, `watch` and the webhook engine all
 * wait "until this settles, or at most so long". Time is read through the global timers, so fake
 * timers drive it in tests.
 */

/**
 * Whether `promise` settles (either way) within `ms`. It is left to settle on its own when the
 * deadline comes first; the timer is cleared when it does not.
 */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => true,
      ),
      deadline,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
