/**
 * Detail of a running job for whoever asks (the CLI's --verbose): an event per weight file
 * written. Emitting costs nothing when nobody listens; the library never prints.
 */
import { EventEmitter } from 'node:events';

export interface FileWritten {
  /** the file's name in its checkpoint folder */
  name: string;
  bytes: number;
  tensors: number;
}

export const runEvents = new EventEmitter<{ file: [FileWritten] }>();
