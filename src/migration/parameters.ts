/**
 * The parameter and capability types, defaults and checks now live in
 * config.ts with the parameter table and the text parsers; this module keeps
 * the names its importers (outgoing.ts, incoming.ts, the monitor) use until
 * they import config.js.
 */
export {
  applyCapabilities,
  applyParameters,
  DEFAULT_CAPABILITIES,
  DEFAULT_PARAMETERS,
  type MigrationCapabilities,
  type MigrationParameters,
} from './config.js';
