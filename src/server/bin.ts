#!/usr/bin/env node
/** `kvkeep-serve`: runs `kvkeep serve` on its own (tests start it as a real process). */
import { runServe } from "./cli.js";

process.exitCode = await runServe(process.argv.slice(2));
