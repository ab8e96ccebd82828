/**
 * A value made once, on first use — an engine context, a model fingerprint — and made again
 * on the next use when making it failed (a failure is not cached: the cause may pass).
 */
export class Lazy<T> {
  readonly #make: () => Promise<T>;
  #value: Promise<T> | null = null;

  constructor(make: () => Promise<T>) {
    this.#make = make;
  }

  get(): Promise<T> {
    if (this.#value) return this.#value;
    const value = (async () => this.#make())();
    this.#value = value;
    value.catch(() => {
      if (this.#value === value) this.#value = null;
    });
    return value;
  }

  /** The value if it was made or is being made, without making it. */
  peek(): Promise<T> | null {
    return this.#value;
  }
}
