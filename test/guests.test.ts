/** The guest-type registry: what `--machine` offers, and adding a type. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createGuest, describeGuestTypes, guestType, guestTypeNames, registerGuestType, type GuestType } from '../src/guests/index.js';

test('the built-in guest types are registered, test first', () => {
  assert.deepEqual(guestTypeNames().slice(0, 2), ['test', 'v86']);
  assert.match(describeGuestTypes(), /^test \(built-in\), v86 \(an x86 PC\)|^test \(built-in\) or v86 \(an x86 PC\)/);
  assert.deepEqual(guestType('v86').variants?.map((v) => v.name), ['multiboot', 'linux', 'linux-disk']);
});

test('an unknown machine names the registered ones', async () => {
  await assert.rejects(createGuest({ machine: 'pdp11', ramSizeBytes: 1 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'sequential' }), /unknown machine 'pdp11' \(available: test, v86/);
});

test('a registered guest type is created by name, and names are unique', async () => {
  const created: string[] = [];
  const type: GuestType = {
    name: 'fake',
    description: 'a fake for this test',
    async create(o) {
      created.push(o.machine);
      throw new Error('fake guests do not start');
    },
    demo: { defaultRam: () => '1M', describe: () => 'fake', sourceArgs: () => [], autoConverge: false, progressFigure: 'passes' },
  };
  registerGuestType(type);
  assert.throws(() => registerGuestType(type), /already registered/);
  assert.ok(guestTypeNames().includes('fake'));
  assert.match(describeGuestTypes(), /or fake \(a fake for this test\)$/);
  await assert.rejects(createGuest({ machine: 'fake', ramSizeBytes: 1 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'sequential' }), /fake guests do not start/);
  assert.deepEqual(created, ['fake']);
});

test('the test guest checks its options as before', async () => {
  await assert.rejects(createGuest({ machine: 'test', ramSizeBytes: 8 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'zigzag' }), /--pattern: sequential or random, got 'zigzag'/);
  await assert.rejects(createGuest({ machine: 'v86', guest: 'dos', ramSizeBytes: 32 << 20, incoming: false, dirtyRatePagesPerSecond: 0, pattern: 'sequential' }), /--guest: multiboot or linux or linux-disk, got 'dos'/);
});
