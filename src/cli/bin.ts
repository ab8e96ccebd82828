#!/usr/bin/env node
/** The `kvkeep` executable (see main.ts; the commands are in commands/index.ts). */
import { main } from "./main.js";

process.exitCode = await main(process.argv.slice(2));
