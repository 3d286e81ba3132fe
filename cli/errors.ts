/** An error caused by the user's input (bad argument, missing file): exit code 1, message only. */
export class UserError extends Error {
  readonly userError = true;
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}
