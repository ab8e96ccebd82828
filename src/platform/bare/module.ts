/**
 * `node:module` for the Bare build: `createRequire` as kvkeep's native loader uses it — to
 * load a `.node` addon by absolute path, which Bare does with `Bare.Addon.load` (its Node-API
 * layer runs kvkeep's addon unchanged). Nothing else is required this way.
 */
import { pathToFileURL } from "node:url";
import { bareGlobal } from "./runtime.js";

export function createRequire(_from: string | URL): (specifier: string) => unknown {
  return (specifier: string) => {
    if (!specifier.endsWith(".node")) {
      throw new Error(`kvkeep's Bare build requires only native addons by path, not ${JSON.stringify(specifier)}`);
    }
    return bareGlobal().Addon.load(pathToFileURL(specifier)).exports;
  };
}
