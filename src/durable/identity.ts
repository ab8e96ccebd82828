/**
 * The one file-identity type: which version of a file is on disk, told without reading it.
 * Pure. Manifests record it per committed state; the durable layer reads it (lstat).
 */

/** What identifies one version of a file on disk without reading it. */
export interface FileIdentity {
  size: number;
  /** Inode number, as a decimal string (64-bit safe). */
  ino: string;
  /** Modification time in nanoseconds, as a decimal string. */
  mtimeNs: string;
}

export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.size === b.size && a.ino === b.ino && a.mtimeNs === b.mtimeNs;
}
