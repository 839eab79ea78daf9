/** An error meant for the user: one line, no stack trace, non-zero exit. */
export class MoekitError extends Error {
  constructor(message: string) {
    super(message.replace(/\s*\n\s*/g, ' '));
    this.name = 'MoekitError';
  }
}

export function fail(message: string): never {
  throw new MoekitError(message);
}
