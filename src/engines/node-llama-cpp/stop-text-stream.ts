/** Streaming generated text around a chat wrapper's text stop triggers (pure). */

/**
 * Streams generated text while watching for the chat wrapper's stop texts: text that could
 * be the start of one is held back until it cannot, so what `onToken` receives joins to
 * exactly the text `completion` returns.
 */
export class StopTextStream {
  #text = "";
  #sent = 0;

  constructor(
    private readonly stopTexts: readonly string[],
    private readonly onText: ((text: string) => void) | undefined,
  ) {}

  /** Add a piece; true when a stop text has appeared (generation should end). */
  push(piece: string): boolean {
    this.#text += piece;
    if (this.#stopIndex(this.#text) >= 0) return true;
    this.#send(this.#text.length - this.#heldBack(this.#text));
    return false;
  }

  /** The final text (cut at a stop text), with whatever was held back sent. */
  finish(full: string): string {
    const stop = this.#stopIndex(full);
    const text = stop >= 0 ? full.slice(0, stop) : full;
    // Pieces were decoded one token at a time; the final decode is the truth. Send the rest
    // of it if what was sent is its prefix (it is, unless a multi-byte character was split).
    if (text.startsWith(this.#text.slice(0, this.#sent))) {
      this.#text = text;
      this.#send(text.length);
    }
    return text;
  }

  #send(end: number): void {
    if (end > this.#sent) {
      this.onText?.(this.#text.slice(this.#sent, end));
      this.#sent = end;
    }
  }

  #stopIndex(text: string): number {
    let first = -1;
    for (const stop of this.stopTexts) {
      const i = text.indexOf(stop);
      if (i >= 0 && (first < 0 || i < first)) first = i;
    }
    return first;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop text. */
  #heldBack(text: string): number {
    let longest = 0;
    for (const stop of this.stopTexts) {
      for (let n = Math.min(stop.length - 1, text.length); n > longest; n--) {
        if (text.endsWith(stop.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}
