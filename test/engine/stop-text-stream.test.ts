import { describe, expect, it } from "vitest";
import { StopTextStream } from "../../src/engines/node-llama-cpp/stop-text-stream.js";

function run(stops: string[], pieces: string[]): { sent: string; text: string; stoppedAt: number } {
  let sent = "";
  const stream = new StopTextStream(stops, (t) => (sent += t));
  let stoppedAt = -1;
  for (const [i, piece] of pieces.entries()) {
    if (stream.push(piece)) {
      stoppedAt = i;
      break;
    }
  }
  const text = stream.finish(pieces.slice(0, stoppedAt < 0 ? pieces.length : stoppedAt + 1).join(""));
  return { sent, text, stoppedAt };
}

describe("StopTextStream", () => {
  it("without stop texts streams every piece as it comes", () => {
    expect(run([], ["a", "b", "c"])).toEqual({ sent: "abc", text: "abc", stoppedAt: -1 });
  });

  it("stops at a stop text split across pieces, never streaming any part of it", () => {
    const result = run(["\n\n### Human"], ["Hello", "\n", "\n##", "# Hu", "man", "ignored"]);
    expect(result).toEqual({ sent: "Hello", text: "Hello", stoppedAt: 4 });
  });

  it("holds back a possible start of a stop text and releases it when it turns out not to be one", () => {
    let sent = "";
    const stream = new StopTextStream(["STOP"], (t) => (sent += t));
    stream.push("go ST");
    expect(sent).toBe("go ");
    stream.push("ART");
    expect(sent).toBe("go START");
    expect(stream.finish("go START")).toBe("go START");
  });

  it("the streamed pieces always join to the returned text, held-back tail included", () => {
    const result = run(["</s>"], ["one", " two", " </"]);
    expect(result.stoppedAt).toBe(-1);
    expect(result.text).toBe("one two </");
    expect(result.sent).toBe(result.text);
  });
});
