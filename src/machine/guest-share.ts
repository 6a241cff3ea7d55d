/**
 * The v86 guest's share of its thread while a migration shares it
 * (V86MachineOptions.guestSharePercent, `livemig run --guest-share`): here,
 * apart from the v86 machine, so the CLI can check the option without
 * loading the emulator.
 */
export const DEFAULT_GUEST_SHARE_PERCENT = 50;
export const MIN_GUEST_SHARE_PERCENT = 1;
export const MAX_GUEST_SHARE_PERCENT = 95;
