#!/usr/bin/env node
/** The `kvkeep` executable (see main.ts for the commands). */
import { main } from "./main.js";

process.exitCode = await main(process.argv.slice(2));
