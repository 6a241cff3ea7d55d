/**
 * VMState: declarative device state, encoded and decoded as QEMU 7.2 does,
 * plus the vmdesc JSON trailer and a decoder driven by it alone.
 */
export {
  MigrationPriority,
  SCALAR_INFO,
  VMSTATE_LIMITS,
  type ArrayField,
  type BufferField,
  type ElementCount,
  type ExistsTest,
  type FieldOptions,
  type IntegerType,
  type ScalarCheck,
  type ScalarField,
  type ScalarType,
  type ScalarValue,
  type StructArrayField,
  type StructField,
  type UnusedField,
  type ValidateField,
  type VBufferField,
  type VMStateDescription,
  type VMStateField,
} from './types.js';
export { field, defineVmsd } from './fields.js';
export { vmstateSave, vmstateSectionNeeded } from './encode.js';
export { vmstateLoad } from './decode.js';
export { formatVmdescJson, vmdescDevice, type VmdescDevice, type VmdescEntry, type VmdescField, type VmdescTrailer } from './vmdesc.js';
export {
  decodeWithVmdesc,
  parseVmdescDevice,
  parseVmdescTrailer,
  type AnalyzedSection,
  type AnalyzedValue,
  type VmdescDecodeOptions,
} from './vmdesc-decoder.js';
export { vmstateFixedSizeBytes } from './size.js';
